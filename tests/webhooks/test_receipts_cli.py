"""`corral webhook receipts | receipt ID | replay ID`, the real command line in a subprocess,
over deliveries a running gateway recorded (both stores). The replay is matched against
the configuration as changed since, without a scheduler running; the next scheduler runs
what it queued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.credentials import CredentialStore
from corral.store import ReceiptOutcome, RunState, open_store
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import write_project
from tests.webhooks.helpers import fixture, fixture_json
from tests.webhooks.signing import SECRET, sign_github

pytestmark = pytest.mark.slow

AGENTS: dict[str, dict[str, object]] = {"dev": {"command": "true"}}
BEFORE = {"dev": '[[webhooks]]\nsource = "gh"\nevents = ["pull_request"]\n'}
AFTER = {"dev": '[[webhooks]]\nsource = "gh"\nevents = ["issues"]\nlabels = ["agent"]\n'}


def project_toml(store_url: str) -> str:
    return f'[state]\nurl = "{store_url}"\n\n[webhooks.gh]\ntype = "github"\ncredential = "gh"\n'


def corral(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral"), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "corral", "-p", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home" / ".corral"))
    CredentialStore().add("webhook_secret", "gh", {"secret": SECRET})
    return tmp_path / "home"


async def test_receipts_and_a_replay_after_the_filter_changed(
    tmp_path: Path, store_url: str, home: Path
) -> None:
    root = tmp_path / "p"
    issue = fixture("issues")  # labelled "agent"
    big = fixture_json("issues")
    big["issue"]["body"] = "x" * (70 * 1024)
    big_body = json.dumps(big).encode()
    async with await open_store(store_url) as store:
        async with (
            running_fleet(root, store, AGENTS, project_toml(store_url), BEFORE) as fleet,
            httpx.AsyncClient(base_url=fleet.url) as http,
        ):
            sent = [
                (issue, sign_github(issue, SECRET, delivery_id="d-1")),
                (
                    issue,
                    {**sign_github(issue, SECRET), "X-Hub-Signature-256": "sha256=" + "1" * 64},
                ),
                (big_body, sign_github(big_body, SECRET)),
            ]
            answers = [
                (await http.post("/webhooks/gh", content=body, headers=headers)).json()
                for body, headers in sent
            ]
        accepted, refused, truncated = (a["receiptId"] for a in answers)
        assert answers[0]["queued"] == [] and answers[0]["agents"][0]["matched"] is False

        # -- receipts --------------------------------------------------------------------
        listed = as_json(corral(root, home, "webhook", "receipts", "--json"))
        assert [r["id"] for r in listed] == [truncated, refused, accepted]
        assert [r["outcome"] for r in listed] == ["accepted", "refused", "accepted"]
        assert listed[2]["agents"][0]["matched"] is False and listed[2]["deliveryId"] == "d-1"
        assert "body" not in listed[0]
        only = as_json(corral(root, home, "webhook", "receipts", "--outcome", "refused", "--json"))
        assert [r["id"] for r in only] == [refused]
        assert as_json(corral(root, home, "webhook", "receipts", "--source", "x", "--json")) == []
        recent = corral(
            root, home, "webhook", "receipts", "--since", "1h", "--limit", "2", "--json"
        )
        assert [r["id"] for r in as_json(recent)] == [truncated, refused]
        table = corral(root, home, "webhook", "receipts")
        assert table.returncode == 0, table.stderr
        for column in ("receipt", "received", "source", "event", "outcome", "agents"):
            assert column in table.stdout
        assert accepted in table.stdout and "signature does not match" in table.stdout
        assert "none matched" in table.stdout
        bad_since = corral(root, home, "webhook", "receipts", "--since", "yesterday")
        assert bad_since.returncode == 2 and "--since 'yesterday'" in bad_since.stderr

        # -- one receipt ----------------------------------------------------------------
        one = as_json(corral(root, home, "webhook", "receipt", accepted, "--json", "--body"))
        assert one["body"] == issue.decode() and one["verified"] is True
        assert one["headers"]["x-github-delivery"] == "d-1"
        shown = corral(root, home, "webhook", "receipt", refused, "--body")
        assert shown.returncode == 0, shown.stderr
        assert "signature does not match" in shown.stdout and "x-hub-signature-256" in shown.stdout
        assert '"Login button broken on Safari"' in shown.stdout  # the body, pretty-printed
        missing = corral(root, home, "webhook", "receipt", "wh_0000000000000000")
        assert missing.returncode == 2 and "no webhook receipt" in missing.stderr

        # -- replay, with no scheduler running, against the changed filter ----------------
        write_project(root, AGENTS, project_toml(store_url), AFTER)
        replayed = corral(root, home, "webhook", "replay", accepted)
        assert replayed.returncode == 0, replayed.stderr
        new_id = replayed.stdout.split(" as ")[1].split()[0]
        assert f"replayed {accepted} as {new_id} (accepted)" in replayed.stdout
        assert "dev: queued (item" in replayed.stdout
        receipt = await store.get_receipt(new_id)
        assert receipt is not None and receipt.replay_of == accepted
        assert receipt.outcome is ReceiptOutcome.ACCEPTED and receipt.queued == ["dev"]
        assert receipt.delivery_id == "d-1"  # the original's, taken by no replay

        refusal = corral(root, home, "webhook", "replay", refused)
        assert refusal.returncode == 2 and "failed verification" in refusal.stderr
        too_big = corral(root, home, "webhook", "replay", truncated)
        assert too_big.returncode == 2 and "kept only the first 65536" in too_big.stderr
        nothing = corral(root, home, "webhook", "replay", "wh_0000000000000000")
        assert nothing.returncode == 2 and "no webhook receipt" in nothing.stderr

        # A second replay is new work too, shown as JSON.
        second = as_json(corral(root, home, "webhook", "replay", accepted, "--json"))
        assert second["replayOf"] == accepted and second["queued"] == ["dev"]

        # -- the next scheduler runs what the replays queued --------------------------------
        async with running_fleet(root, store, AGENTS, project_toml(store_url), AFTER) as fleet:
            runs = await fleet.finished("dev", 2)
        assert {r.state for r in runs} == {RunState.SUCCEEDED}
        assert sorted(str((r.trigger_detail or {})["receiptId"]) for r in runs) == sorted(
            [new_id, second["id"]]
        )
        # A replay's trigger says when the event was received, not when it was replayed.
        original = await store.get_receipt(accepted)
        assert original is not None
        for run in runs:
            stamp = datetime.fromisoformat(str((run.trigger_detail or {})["timestamp"]))
            assert abs(stamp - original.received_at) < timedelta(milliseconds=1)
