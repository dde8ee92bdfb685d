"""The API key store (lab/serving/keys.py) and `lab keys`: real SQLite files in tmp_path."""

from __future__ import annotations

import hashlib
import sqlite3
import stat

import pytest

from lab.cli import main
from lab.errors import ConfigError, LabError, NotFound
from lab.serving.keys import SCOPES, KeyStore, parse_scopes


@pytest.fixture
def key_file(tmp_path):
    return tmp_path / "keys.db"


def _file_bytes(path) -> bytes:
    """The key file with its WAL and shared-memory files, as anyone who can read them sees them."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_a_created_key_verifies_and_only_its_sha256_is_stored(key_file):
    with KeyStore.open(key_file) as store:
        key, raw = store.create("deploy-bot", ["promote", "flags"], actor="alice")
        assert raw.startswith(f"lab_{key.id}_") and len(raw) == 4 + 12 + 1 + 43
        assert key.scopes == ("promote", "flags") and key.created_by == "alice" and key.live
        assert store.verify(raw) == key
        on_disk = _file_bytes(key_file)
    secret = raw.split("_", 2)[2]
    assert raw.encode() not in on_disk and secret.encode() not in on_disk
    assert hashlib.sha256(raw.encode()).hexdigest().encode() in on_disk  # what is kept instead
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("tamper", [
    lambda raw: raw[:-1] + ("A" if raw[-1] != "A" else "B"),  # the right id, a wrong secret
    lambda raw: "lab_000000000000_" + raw.split("_", 2)[2],  # an unknown id
    lambda raw: raw + "x",  # malformed
    lambda raw: "",
    lambda raw: raw.upper(),
])
def test_a_wrong_key_is_refused(key_file, tamper):
    with KeyStore.open(key_file) as store:
        _, raw = store.create("ci", "admin")
        assert store.verify(raw) is not None
        assert store.verify(tamper(raw)) is None


def test_a_revocation_by_another_process_is_seen_on_the_next_check(key_file):
    with KeyStore.open(key_file) as server, KeyStore.open(key_file) as cli:
        key, raw = cli.create("ci", "promote")
        assert server.verify(raw) == key and server.live_count() == 1  # now cached by the server
        revoked = cli.revoke("ci", actor="bob", reason="leaked")
        assert server.verify(raw) is None and server.live_count() == 0
        assert revoked.revoked_by == "bob" and revoked.revoke_reason == "leaked" and not revoked.live
        # Revoking on the same connection is seen as well.
        _, again = server.create("ci", "promote")
        assert server.verify(again) is not None
        server.revoke("ci")
        assert server.verify(again) is None


def test_scopes_names_and_revocation_rules(key_file):
    assert parse_scopes("flags, promote") == ("promote", "flags")  # SCOPES order
    with pytest.raises(ConfigError, match="unknown scope.*bogus.*scopes are: admin, predict"):
        parse_scopes(["bogus"])
    with pytest.raises(ConfigError, match="at least one scope"):
        parse_scopes("")
    with KeyStore.open(key_file) as store:
        admin, _ = store.create("ops", "admin")
        assert all(admin.allows(scope) for scope in SCOPES)
        flags, _ = store.create("flagger", "flags")
        assert flags.allows("flags") and not flags.allows("promote") and not flags.allows("predict")
        with pytest.raises(LabError, match="already named 'ops'.*lab keys revoke ops"):
            store.create("ops", "flags")
        with pytest.raises(ConfigError, match="key name"):
            store.create("two words", "flags")
        store.revoke(admin.id)  # by id too
        with pytest.raises(NotFound, match="no live API key named 'ops'.*live keys: flagger"):
            store.revoke("ops")
        reused, _ = store.create("ops", "flags")  # a revoked key's name may be given again
        assert reused.id != admin.id
        assert [k.name for k in store.list()] == ["ops", "flagger", "ops"]
        assert [k.id for k in store.list(include_revoked=False)] == [flags.id, reused.id]


def test_keys_are_never_deleted_or_edited_but_revoked_once(key_file):
    with KeyStore.open(key_file) as store:
        key, _ = store.create("ci", "promote")
    conn = sqlite3.connect(key_file)
    try:
        for sql in ("DELETE FROM api_keys", "UPDATE api_keys SET scopes = '[\"admin\"]'",
                    "UPDATE api_keys SET sha256 = 'x', revoked_at = 'now'"):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)
        conn.execute("UPDATE api_keys SET revoked_at = 'now', revoked_by = 'me'")
        conn.commit()
        with pytest.raises(sqlite3.IntegrityError, match="only be revoked, once"):
            conn.execute("UPDATE api_keys SET revoked_at = 'later'")
    finally:
        conn.close()


def test_lab_keys_create_list_revoke(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n[tool.lab]\n')
    root = ["--root", str(tmp_path)]
    assert main([*root, "keys", "list"]) == 0
    assert "lab keys create NAME --scope admin" in capsys.readouterr().out
    assert main([*root, "keys", "create", "deploy-bot", "--scope", "promote", "--scope", "flags"]) == 0
    out = capsys.readouterr().out
    raw = out.strip().splitlines()[-1]
    assert "shown this once" in out and raw.startswith("lab_")
    with KeyStore.open(tmp_path / "keys.db", create=False) as store:
        assert store.verify(raw).scopes == ("promote", "flags")
    assert raw.encode() not in _file_bytes(tmp_path / "keys.db")

    assert main([*root, "keys", "create", "x", "--scope", "root"]) == 2
    assert "unknown scope(s) root" in capsys.readouterr().err
    assert main([*root, "keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "deploy-bot" in listed and "promote,flags" in listed and "live" in listed and raw not in listed
    assert main([*root, "keys", "revoke", "deploy-bot", "--reason", "rotated"]) == 0
    assert "refuses it from its next request" in capsys.readouterr().out
    assert main([*root, "keys", "revoke", "deploy-bot"]) == 2
    assert "no live API key named 'deploy-bot'" in capsys.readouterr().err
    assert main([*root, "keys", "list", "--live"]) == 0
    assert "no live API keys" in capsys.readouterr().out
    assert main([*root, "audit"]) == 0
    assert "no admin actions recorded yet" in capsys.readouterr().out
    assert not (tmp_path / "registry.db").exists()  # reading the audit log creates no registry
