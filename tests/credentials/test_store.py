"""The store on real files: modes under any umask, atomic replacement, list, remove, resolve."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from corral.credentials import CredentialError, CredentialRef, CredentialStore, _files, default_root

from .keys import fake_key, ssh_key, token


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_default_root_is_under_corral_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "ch"))
    assert default_root() == tmp_path / "ch" / "credentials"
    assert CredentialStore().root == tmp_path / "ch" / "credentials"
    monkeypatch.delenv("CORRAL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_root() == tmp_path / "h" / ".corral" / "credentials"


@pytest.mark.parametrize("umask_value", [0o000, 0o022, 0o277])
def test_modes_are_0700_and_0600_whatever_the_umask(
    store: CredentialStore, umask: Callable[[int], None], umask_value: int
) -> None:
    umask(umask_value)
    value = token()
    stored = store.add("github_token", "default", {"token": value})
    assert stored.path == store.root / "github_token" / "default"
    assert stored.fields == ("token",)
    for directory in (store.root, store.root / "github_token", stored.path):
        assert mode(directory) == 0o700, directory
    assert mode(stored.path / "token") == 0o600
    assert (stored.path / "token").read_text() == value
    assert os.stat(stored.path / "token").st_uid == os.getuid()


def test_a_file_is_private_before_its_first_byte_is_written(
    store: CredentialStore, umask: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    umask(0o000)
    seen: list[int] = []
    real_write = os.write

    def spying_write(fd: int, data: bytes | memoryview) -> int:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    store.add("git_ssh", "deploy", {"id_rsa": fake_key(), "known_hosts": "gh.com ssh-x y\n"})
    monkeypatch.undo()
    assert seen and set(seen) == {0o600}


def test_overwrite_needs_replace_and_swaps_the_file_atomically(store: CredentialStore) -> None:
    first, second = token(), token()
    stored = store.add("github_token", "default", {"token": first})
    inode = os.stat(stored.path / "token").st_ino
    with pytest.raises(CredentialError, match="already stored") as caught:
        store.add("github_token", "default", {"token": second})
    assert "corral creds add github_token --force" in str(caught.value)
    assert (stored.path / "token").read_text() == first

    store.add("github_token", "default", {"token": second}, replace=True)
    assert (stored.path / "token").read_text() == second
    assert os.stat(stored.path / "token").st_ino != inode  # a new file renamed over the old
    assert sorted(p.name for p in stored.path.iterdir()) == ["token"]  # no temporary left


def test_a_failed_replacement_leaves_the_old_credential_whole(
    store: CredentialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key, old_hosts = fake_key(), "github.com ssh-ed25519 AAAAold\n"
    stored = store.add("git_ssh", "deploy", {"id_rsa": old_key, "known_hosts": old_hosts})
    real = _files._write_new
    calls: list[Path] = []

    def failing(path: Path, content: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, content)

    monkeypatch.setattr(_files, "_write_new", failing)
    new = {"id_rsa": fake_key(), "known_hosts": "github.com ssh-ed25519 AAAAnew\n"}
    with pytest.raises(OSError, match="No space"):
        store.add("git_ssh", "deploy", new, replace=True)
    assert (stored.path / "id_rsa").read_text() == old_key
    assert (stored.path / "known_hosts").read_text() == old_hosts
    assert sorted(p.name for p in stored.path.iterdir()) == ["id_rsa", "known_hosts"]


def test_replacing_drops_optional_fields_not_given_again(store: CredentialStore) -> None:
    hosts = "github.com ssh-ed25519 AAAA\n"
    stored = store.add("git_ssh", "deploy", {"id_rsa": fake_key(), "known_hosts": hosts})
    assert stored.fields == ("id_rsa", "known_hosts")
    store.add("git_ssh", "deploy", {"id_rsa": fake_key()}, replace=True)
    assert sorted(p.name for p in stored.path.iterdir()) == ["id_rsa"]


@pytest.mark.parametrize(
    ("type_name", "instance", "values", "message"),
    [
        ("github_token", "default", {"token": ""}, "is empty"),
        ("github_token", "default", {"token": "   "}, "is empty"),
        ("github_token", "default", {"token": "abc"}, "shorter than 4"),
        ("github_token", "default", {"token": "ghp_a\nghp_b"}, "must be one line"),
        ("github_token", "default", {"token": "ghp_\0abc"}, "NUL"),
        ("github_token", "default", {}, "no value for token"),
        ("github_token", "default", {"token": token(), "user": "me"}, "has no field user"),
        ("git_ssh", "default", {"known_hosts": "x y z\n"}, "no value for id_rsa"),
        ("nope", "default", {"value": token()}, "unknown credential type"),
        ("env", "1BAD", {"value": token()}, "not a valid environment variable name"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_written(
    store: CredentialStore,
    type_name: str,
    instance: str,
    values: dict[str, str],
    message: str,
) -> None:
    with pytest.raises(CredentialError, match=message):
        store.add(type_name, instance, values)
    assert not store.root.exists()


def test_multi_line_values_keep_their_final_newline(store: CredentialStore) -> None:
    key = fake_key().rstrip("\n")
    stored = store.add("git_ssh", "default", {"id_rsa": key})
    assert (stored.path / "id_rsa").read_text() == key + "\n"


def test_list_and_remove(store: CredentialStore) -> None:
    assert store.list() == []
    secret = token()
    store.add("github_token", "default", {"token": secret})
    store.add("github_token", "MyOrg", {"token": token()})
    store.add("env", "SENTRY_TOKEN", {"value": token("sntrys_")})
    listed = store.list()
    assert [(str(c.ref), c.fields, c.problems) for c in listed] == [
        ("env:SENTRY_TOKEN", ("value",), ()),
        ("github_token:MyOrg", ("token",), ()),
        ("github_token", ("token",), ()),
    ]
    assert listed[2].path == store.root / "github_token" / "default"
    assert secret not in repr(listed)

    removed = store.remove("github_token", "MyOrg")
    assert removed == store.root / "github_token" / "MyOrg" and not removed.exists()
    store.remove("github_token", "default")
    assert not (store.root / "github_token").exists()  # the empty type directory goes too
    assert [str(c.ref) for c in store.list()] == ["env:SENTRY_TOKEN"]
    with pytest.raises(CredentialError, match="not stored") as caught:
        store.remove("github_token", "default")
    assert "corral creds ls" in str(caught.value)


def test_list_shows_what_is_wrong_without_values(store: CredentialStore) -> None:
    store.add("github_token", "default", {"token": token()})
    store.add("anthropic_key", "default", {"token": token("sk-ant-")})
    os.chmod(store.root / "github_token" / "default", 0o755)
    (store.root / "anthropic_key" / "default" / "token").unlink()
    (store.root / "mystery" / "x").mkdir(parents=True)
    problems = {str(c.ref): c.problems for c in store.list()}
    assert "open to group or others (mode 0755)" in problems["github_token"][0]
    assert problems["anthropic_key"] == (
        "token is missing; store it again with `corral creds add anthropic_key --force`",
    )
    assert (
        f"`chmod -R go-rwx {store.root / 'github_token' / 'default'}`"
        in problems["github_token"][0]
    )
    assert "unknown credential type" in problems["mystery:x"][0]


def test_resolve_names_every_missing_credential_with_its_fix(store: CredentialStore) -> None:
    store.add("github_token", "default", {"token": token()})
    names = ["github_token", "env:SENTRY_TOKEN", "git_ssh:deploy", "githb_token", "env"]
    with pytest.raises(CredentialError) as caught:
        store.resolve(names)
    text = str(caught.value)
    assert text.startswith("4 credentials cannot be used:")
    assert "env:SENTRY_TOKEN: not stored; add it with `corral creds add env:SENTRY_TOKEN`" in text
    assert "git_ssh:deploy: not stored; add it with `corral creds add git_ssh:deploy`" in text
    assert 'did you mean "github_token"' in text
    assert "write env:NAME" in text
    assert [p.ref for p in caught.value.problems] == [
        "env:SENTRY_TOKEN",
        "git_ssh:deploy",
        "githb_token",
        "env",
    ]


def test_resolve_refuses_a_directory_or_file_open_to_others(store: CredentialStore) -> None:
    stored = store.add("github_token", "default", {"token": token()})
    os.chmod(stored.path, 0o750)
    with pytest.raises(CredentialError) as caught:
        store.resolve(["github_token"])
    message = str(caught.value)
    assert f"{stored.path} is open to group or others (mode 0750); refused" in message
    assert f"`chmod -R go-rwx {stored.path}`" in message

    os.chmod(stored.path, 0o700)
    os.chmod(stored.path / "token", 0o644)
    with pytest.raises(CredentialError, match=r"token is open to group or others \(mode 0644\)"):
        store.resolve(["github_token"])
    subprocess.run(["chmod", "-R", "go-rwx", str(stored.path)], check=True)  # the advice works
    assert len(store.resolve(["github_token"])) == 1


def test_resolve_reports_malformed_credentials(store: CredentialStore) -> None:
    store.add("github_token", "default", {"token": token()})
    store.add("openai_key", "default", {"token": token("sk-")})
    store.add("git_ssh", "default", {"id_rsa": fake_key()})
    (store.root / "github_token" / "default" / "token").write_text("ghp_one\nghp_two\n")
    (store.root / "openai_key" / "default" / "token").write_text("")
    (store.root / "git_ssh" / "default" / "id_rsa").unlink()
    with pytest.raises(CredentialError) as caught:
        store.resolve(["github_token", "openai_key", "git_ssh"])
    assert [(p.ref, p.message.split(";")[0]) for p in caught.value.problems] == [
        ("github_token", "token must be one line"),
        ("openai_key", "token is empty"),
        ("git_ssh", "id_rsa is missing"),
    ]
    fixes = [p.fix for p in caught.value.problems]
    assert fixes[2] == "store it again with `corral creds add git_ssh --force`"


def test_a_hand_written_file_may_end_with_a_newline(store: CredentialStore) -> None:
    value = token()
    directory = store.root / "github_token" / "default"
    directory.mkdir(parents=True, mode=0o700)
    fd = os.open(directory / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (value + "\n").encode())
    os.close(fd)
    os.chmod(directory, 0o700)
    (loaded,) = store.resolve(["github_token"])
    assert loaded.values == {"token": value}


def test_two_credentials_setting_one_variable_are_refused(store: CredentialStore) -> None:
    store.add("github_token", "default", {"token": token()})
    store.add("github_token", "work", {"token": token()})
    with pytest.raises(CredentialError) as caught:
        store.resolve(["github_token", "github_token:work"])
    assert "github_token:work: sets GITHUB_TOKEN, which github_token sets too" in str(caught.value)
    # The same credential named twice is one credential.
    assert len(store.resolve(["github_token", "github_token:default"])) == 1


def test_every_built_in_type_gives_its_variables_and_files(store: CredentialStore) -> None:
    values = {
        "github_token": token(),
        "anthropic_key": token("sk-ant-api03-"),
        "openai_key": token("sk-proj-"),
        "sentry": token("sntrys_"),
    }
    key, hosts = fake_key(), "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6\n"
    store.add("github_token", "default", {"token": values["github_token"]})
    store.add("anthropic_key", "default", {"token": values["anthropic_key"]})
    store.add("openai_key", "default", {"token": values["openai_key"]})
    store.add("env", "SENTRY_TOKEN", {"value": values["sentry"]})
    store.add("git_ssh", "default", {"id_rsa": key, "known_hosts": hosts})
    loaded = store.resolve(
        ["github_token", "anthropic_key", "openai_key", "env:SENTRY_TOKEN", "git_ssh"]
    )
    by_type = {c.ref.type: c for c in loaded}
    root = store.root

    gh = by_type["github_token"]
    assert gh.ref == CredentialRef("github_token", "default")
    assert gh.directory == root / "github_token" / "default"
    assert gh.env == {"GITHUB_TOKEN": values["github_token"], "GH_TOKEN": values["github_token"]}
    assert gh.files == {"token": root / "github_token" / "default" / "token"}
    assert by_type["anthropic_key"].env == {"ANTHROPIC_API_KEY": values["anthropic_key"]}
    assert by_type["openai_key"].env == {"OPENAI_API_KEY": values["openai_key"]}
    assert by_type["env"].env == {"SENTRY_TOKEN": values["sentry"]}
    assert by_type["env"].files == {"value": root / "env" / "SENTRY_TOKEN" / "value"}

    ssh = by_type["git_ssh"]
    key_file, hosts_file = ssh.files["id_rsa"], ssh.files["known_hosts"]
    assert key_file.read_text() == key and hosts_file.read_text() == hosts
    assert ssh.env == {
        "GIT_SSH_COMMAND": f"ssh -i {key_file} -o IdentitiesOnly=yes "
        f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={hosts_file}"
    }
    assert ssh.values == {"id_rsa": key, "known_hosts": hosts}
    assert ssh.secrets() == (key,)  # known_hosts is public: not redacted
    for credential in loaded:  # the values stay out of repr (and so out of tracebacks)
        for value in credential.values.values():
            assert value.strip() not in repr(credential)


def test_git_ssh_without_known_hosts(store: CredentialStore) -> None:
    store.add("git_ssh", "deploy", {"id_rsa": fake_key()})
    (ssh,) = store.resolve(["git_ssh:deploy"])
    path = store.root / "git_ssh" / "deploy" / "id_rsa"
    assert ssh.env == {
        "GIT_SSH_COMMAND": f"ssh -i {path} -o IdentitiesOnly=yes "
        "-o StrictHostKeyChecking=accept-new"
    }
    assert ssh.context_line().startswith("`GIT_SSH_COMMAND`")


def test_env_for_rewrites_the_paths_to_the_mount(store: CredentialStore) -> None:
    value = token()
    store.add("git_ssh", "deploy", {"id_rsa": fake_key(), "known_hosts": "h ssh-rsa AAAA\n"})
    store.add("github_token", "default", {"token": value})
    ssh, gh = store.resolve(["git_ssh:deploy", "github_token"])
    assert ssh.env_for(PurePosixPath("/credentials")) == {
        "GIT_SSH_COMMAND": "ssh -i /credentials/git_ssh/deploy/id_rsa -o IdentitiesOnly=yes "
        "-o StrictHostKeyChecking=accept-new "
        "-o UserKnownHostsFile=/credentials/git_ssh/deploy/known_hosts"
    }
    assert gh.env_for(PurePosixPath("/credentials")) == {"GITHUB_TOKEN": value, "GH_TOKEN": value}
    assert ssh.env_for(store.root) == ssh.env


def test_ssh_command_quotes_paths_and_ssh_reads_the_stored_key(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    umask(0o000)
    if shutil.which("ssh") is None:
        pytest.skip("ssh is not installed")
    key = ssh_key(tmp_path)
    store = CredentialStore(tmp_path / "my home" / "cred's")
    store.add("git_ssh", "default", {"id_rsa": key.read_text()})
    (ssh,) = store.resolve(["git_ssh"])
    stored = ssh.files["id_rsa"]
    # ssh-keygen refuses a key file others can read and one without its final newline.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(stored)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == key.with_suffix(".pub").read_text().split()[:2]
    # The shell splits GIT_SSH_COMMAND as git does; ssh -G prints its settings, no network.
    shown = subprocess.run(
        ["sh", "-c", ssh.env["GIT_SSH_COMMAND"] + ' -G "$@"', "ssh", "github.com"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"identityfile {stored}" in shown
    assert "identitiesonly yes" in shown
    assert shlex.split(ssh.env["GIT_SSH_COMMAND"])[2] == str(stored)


def test_copy_to_writes_private_files_and_returns_their_env(
    store: CredentialStore, tmp_path: Path, umask: Callable[[int], None]
) -> None:
    umask(0o000)
    store.add("git_ssh", "deploy", {"id_rsa": fake_key()})
    (ssh,) = store.resolve(["git_ssh:deploy"])
    root = tmp_path / "run" / ".corral" / "credentials"
    env = ssh.copy_to(root)
    copied = root / "git_ssh" / "deploy" / "id_rsa"
    assert copied.read_text() == ssh.values["id_rsa"]
    assert mode(copied) == 0o600
    assert mode(root) == mode(root / "git_ssh") == mode(copied.parent) == 0o700
    assert env == ssh.env_for(root)
    assert str(copied) in env["GIT_SSH_COMMAND"]
