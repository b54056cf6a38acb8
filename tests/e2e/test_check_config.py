"""`pushgate check-config`: the shipped example and the e2e config pass; unknown keys and
out-of-range numbers are named."""

from __future__ import annotations

import os
import re
import tempfile

import pytest

from conftest import PUSH_JID, prosody_only
from pushgate_proc import REPO, Pushgate, binary_path, run_check_config

EXAMPLE = os.path.join(REPO, "etc", "pushgate.toml")


@pytest.fixture(scope="module")
def binary():
    b = binary_path()
    if not os.access(b, os.X_OK):
        pytest.fail(f"pushgate binary not found at {b}: run `cargo build --bin pushgate`")
    return b


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="pushgate-e2e-cc-") as d:
        yield d


def _out(r) -> str:
    return f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def test_example_config_is_valid(binary, workdir):
    r = run_check_config(binary, EXAMPLE, cwd=workdir)
    assert r.returncode == 0, _out(r)
    # "ok", possibly followed by a summary ("ok: component push.localhost, providers [...]")
    words = r.stdout.split()
    assert words and words[0].rstrip(":") == "ok", _out(r)
    assert os.listdir(workdir) == [], "check-config must not create anything (e.g. ./data)"


@prosody_only
def test_e2e_config_is_valid(binary, workdir, stack):
    pg = Pushgate(stack.server, PUSH_JID, stack.push_secret, extra_toml=stack.pushgate_toml)
    try:
        r = run_check_config(binary, pg.config_path, cwd=workdir)
        assert r.returncode == 0, f"{_out(r)}\nconfig:\n{pg.config_text()}"
    finally:
        pg.cleanup()


@pytest.mark.parametrize("section,key", [("[component]", "bogus_key"),
                                         ("[providers.webpush]", "allow_htttp")])
def test_unknown_key_is_named(binary, workdir, section, key):
    text = open(EXAMPLE).read()
    assert section in text
    path = os.path.join(workdir, "bad.toml")
    with open(path, "w") as f:
        f.write(text.replace(section, f"{section}\n{key} = true", 1))
    r = run_check_config(binary, path, cwd=workdir)
    assert r.returncode != 0, _out(r)
    assert key in r.stdout + r.stderr, f"the error must name {key!r}: {_out(r)}"
    assert not r.stdout.split()[:1] or r.stdout.split()[0].rstrip(":") != "ok", _out(r)


@pytest.mark.parametrize("key,value", [
    # The largest TOML integer: once accepted, then every publish panicked.
    ("storage.cache_ttl_secs", "9223372036854775807"),
    ("providers.webpush.request_timeout_secs", "0"),
])
def test_out_of_range_number_is_named(binary, workdir, key, value):
    text = open(EXAMPLE).read()
    name = key.rsplit(".", 1)[1]
    line = re.compile(rf"^{name} = .*$", re.MULTILINE)
    assert line.search(text), f"{name} is set in the example"
    path = os.path.join(workdir, "range.toml")
    with open(path, "w") as f:
        f.write(line.sub(f"{name} = {value}", text, count=1))
    r = run_check_config(binary, path, cwd=workdir)
    assert r.returncode == 2, _out(r)
    assert f"{key}: must be between" in r.stderr, f"the error must name {key!r}: {_out(r)}"
