"""The common queries file: one parameter style (``:name``) translated for PostgreSQL
(``%(name)s``), and a dialect's own queries overlaid on the common ones."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg.rows import dict_row

from corral.store._sqlfiles import (
    load_sql_files,
    overlay_queries,
    parse_named_queries,
    to_pyformat,
)
from tests.conftest import PG_BASE_URL


@pytest.mark.parametrize(
    ("common", "pyformat"),
    [
        ("WHERE id = :id", "WHERE id = %(id)s"),
        ("VALUES (:a,:b_2)", "VALUES (%(a)s,%(b_2)s)"),
        ("SET at = :at::timestamptz", "SET at = %(at)s::timestamptz"),
        ("SELECT x::int, y::text[]", "SELECT x::int, y::text[]"),
        ("WHERE note = 'a:b and :c'", "WHERE note = 'a:b and :c'"),
        ("WHERE note = 'it''s :c' AND id = :id", "WHERE note = 'it''s :c' AND id = %(id)s"),
        ("WHERE note LIKE '50%'", "WHERE note LIKE '50%%'"),
        ("SELECT id % 2", "SELECT id %% 2"),
        ('SELECT "odd:name" FROM t', 'SELECT "odd:name" FROM t'),
        (
            "-- at most :batch rows, 10%\nLIMIT :batch",
            "-- at most :batch rows, 10%%\nLIMIT %(batch)s",
        ),
        ("/* :skip 5% */ WHERE a = :a", "/* :skip 5%% */ WHERE a = %(a)s"),
        ("WHERE a = :a -- end", "WHERE a = %(a)s -- end"),
        ("SELECT arr[1:2]", "SELECT arr[1:2]"),
        ("SELECT ':'", "SELECT ':'"),
        ("WHERE t = 'open", "WHERE t = 'open"),  # unterminated: left as it is
    ],
)
def test_translation(common: str, pyformat: str) -> None:
    assert to_pyformat(common) == pyformat


_PROBE = """-- :c is not a parameter here, and 5% is not a placeholder
SELECT CAST(:a AS integer) + 1 AS x, '50%' AS p, 'it''s :x' AS q, :b AS b, 7 % 4 AS m
/* :d */"""


def test_one_text_gives_the_same_answer_on_both_databases() -> None:
    """Real drivers: the common text on SQLite as written and on PostgreSQL translated
    return the same row (psycopg reads ``%%`` as ``%`` and the comments as text)."""
    params = {"a": 41, "b": "x:y%"}
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    on_sqlite = dict(conn.execute(_PROBE, params).fetchone())
    with psycopg.connect(PG_BASE_URL, autocommit=True) as pg:
        on_postgres = pg.cursor(row_factory=dict_row).execute(to_pyformat(_PROBE), params)
        row = on_postgres.fetchone()
    assert on_sqlite == row == {"x": 42, "p": "50%", "q": "it's :x", "b": "x:y%", "m": 3}


def test_a_dialect_overrides_a_common_query() -> None:
    common = {"one": "SELECT :a", "two": "SELECT :b"}
    own = {"two": "SELECT %(b)s::text", "three": "SELECT 3"}
    assert overlay_queries(common, own, "postgresql") == {
        "one": "SELECT %(a)s",
        "two": "SELECT %(b)s::text",
        "three": "SELECT 3",
    }
    assert overlay_queries(common, {"two": "SELECT :b || ''"}, "sqlite")["two"] == (
        "SELECT :b || ''"
    )


@pytest.mark.parametrize(
    ("dialect", "copy"), [("postgresql", "SELECT %(a)s"), ("sqlite", "SELECT :a")]
)
def test_an_override_that_repeats_the_common_query_is_refused(dialect: str, copy: str) -> None:
    with pytest.raises(ValueError, match="word for word: one; delete them"):
        overlay_queries({"one": "SELECT :a"}, {"one": copy}, dialect)


def test_an_unknown_dialect_has_no_parameter_style() -> None:
    with pytest.raises(ValueError, match="no parameter style"):
        overlay_queries({}, {}, "mysql")


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_shipped_files_load(dialect: str) -> None:
    """The files as shipped overlay cleanly: no override repeats a common query."""
    assert load_sql_files(dialect).queries


def test_a_file_without_queries_holds_none() -> None:
    """An empty common file (or one with only its header) is no queries, not an error."""
    assert parse_named_queries("") == {}
    assert parse_named_queries("-- the header only\n") == {}


def test_a_heading_between_blocks_is_not_part_of_the_query_above() -> None:
    text = "-- name: one\n-- why\nSELECT 1\n\n-- Section two ------\n\n-- name: two\nSELECT 2\n"
    assert parse_named_queries(text) == {"one": "-- why\nSELECT 1", "two": "SELECT 2"}
