"""`--redact-pii`: planted secrets of every kind in real code (this Python's standard library) are
replaced by their placeholders before tokenization and counted per kind in the manifest; look-alikes
(version strings, lock-file hashes, documentation addresses, private IPs, C++ scopes) stay. The
planted keys are checked against detect-secrets, the reference detector, so they are real formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data_prep import pretrain
from data_prep.__main__ import main as cli
from data_prep.filters import FilterConfig
from data_prep.pii import Redactor
from gptoss.tokenizer import encoding
from megatron_cpu.compat import import_bridge

STDLIB = Path(os.__file__).parent
HOSTS = ["heapq.py", "bisect.py", "shlex.py", "fnmatch.py", "colorsys.py", "json/decoder.py", "glob.py"]

# kind -> (planted line, the line after redaction, detect-secrets' name for it or None)
PLANTED = {
    "aws_access_key": ('aws_key_id = "AKIAQ3EGT5YXW2M7KJHP"', 'aws_key_id = "<KEY>"', "AWS Access Key"),
    "github_token": ('GH = "ghp_R8mZ2kQw9XyT4vB7nL1pA6sD3fG5hJ0cE2uI"', 'GH = "<KEY>"', "GitHub Token"),
    "gitlab_token": ("token: glpat-Xy7Qm2Lp9Rt4Vw6Zk8Bn", "token: <KEY>", "GitLab Token"),
    "slack_token": (
        "SLACK = 'xoxb-2748193650-4820173956123-QwErTyUiOpAsDfGhJkLzXcVb'",
        "SLACK = '<KEY>'",
        "Slack Token",
    ),
    "slack_webhook": (
        'HOOK = "https://hooks.slack.com/services/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"',
        'HOOK = "<KEY>"',
        "Slack Token",
    ),
    "stripe_key": (
        'stripe.api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"',
        'stripe.api_key = "<KEY>"',
        "Stripe Access Key",
    ),
    "openai_key": (
        'client = OpenAI(api_key="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")',
        'client = OpenAI(api_key="<KEY>")',
        "OpenAI Token",
    ),
    "sendgrid_key": (
        'SENDGRID = "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"',
        'SENDGRID = "<KEY>"',
        "SendGrid API Key",
    ),
    "pypi_token": (
        "password = pypi-AgEIcHlwaS5vcmcCJGQ4ZTI5ZjA1LTU1YmEtNDc4MC1iMjU0LTM4NjBkNWQ2MWYzNgACKlszLCJlNzc0ZDk1Zi0",
        "password = <KEY>",
        "PyPI Token",
    ),
    "npm_token": (
        "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "//registry.npmjs.org/:_authToken=<KEY>",
        "NPM tokens",
    ),
    "google_api_key": ('MAPS_KEY = "AIzaSyD4e8Qx2Lm7Np1Rs6Tv9Wy3Zb5Cd0Ef2Gh"', 'MAPS_KEY = "<KEY>"', None),
    "jwt": (
        'auth = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.'
        'SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"',
        'auth = "<KEY>"',
        "JSON Web Token",
    ),
    "private_key": (
        "KEY = '''-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2sXw\n"
        "-----END RSA PRIVATE KEY-----'''",
        "KEY = '''<KEY>'''",
        "Private Key",
    ),
    "password": ('DB_PASSWORD = "hunter2-Secr3t!"', 'DB_PASSWORD = "<PASSWORD>"', "Secret Keyword"),
    "email": ("# maintainer: Jane Doe <jane.doe@corp-mail.de>", "# maintainer: Jane Doe <<EMAIL>>", None),
    "ipv4": ('UPSTREAM = "93.184.216.34"', 'UPSTREAM = "<IP_ADDRESS>"', None),
    "ipv6": ('UPSTREAM6 = "2a03:2880:f12f:83:face:b00c:0:25de"', 'UPSTREAM6 = "<IP_ADDRESS>"', None),
}

LOOK_ALIKES = [
    '__version__ = "1.2.3.4"',
    "requests==2.31.0.1",
    "release v10.4.0.1 of the firmware",
    "Return a Tuple[str, int] e.g., ['7.1.4.34', 1806]",
    '{file = "pkg-1.0-py3-none-any.whl", hash = "sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"}',
    '"integrity": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg=="',
    "resolved commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "contact: user@example.com or admin@mail.example.org, never root@host.test",
    "git clone git@github.com:owner/repo.git; see logo@2x.png",
    'HOSTS = ["192.168.1.10", "10.0.0.1", "127.0.0.1", "203.0.113.7", "8.8.8.8", "0.0.0.0"]',
    'LOCAL6 = ["::1", "fe80::1ff:fe23:4567:890a", "2001:db8::1"]',
    "std::chrono::duration<int> d; at 12:30:45 the MAC 00:1a:2b:3c:4d:5e",
    'password = os.environ["DB_PASSWORD"]',
    'password = "${DB_PASSWORD}"',
    'PASSWORD_FIELD = "password_hash"',
    'token_type = "bearer-token"',
    'masked = "********"',
    "uuid = 'f47ac10b-58cc-4372-a567-0e02b2c3d479'",
]


def _host(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


def _plant(host: str, lines: list[str]) -> str:
    rows = host.splitlines(keepends=True)
    mid = len(rows) // 2
    return "".join(rows[:mid]) + "\n".join(lines) + "\n" + "".join(rows[mid:])


def test_each_kind_is_replaced_and_look_alikes_stay():
    r = Redactor()
    for kind, (line, want, _) in PLANTED.items():
        assert r.redact(line) == (want, {kind: 1}), kind
    for line in LOOK_ALIKES:
        assert r.redact(line) == (line, {}), line
    for name in HOSTS:  # real code without secrets is left byte for byte
        assert r.redact(_host(name)) == (_host(name), {}), name


def test_planted_keys_are_what_detect_secrets_finds():
    """The reference: detect-secrets (too slow for the pipeline, 0.06 MB/s) flags each planted key
    with the plugin of its kind, and none of the look-alikes with a format plugin."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    formats = {ds for _, _, ds in PLANTED.values() if ds and ds != "Secret Keyword"}
    with default_settings():
        for kind, (line, _, ds) in PLANTED.items():
            if ds is not None:
                found = {s.type for ln in line.splitlines() for s in scan_line(ln)}
                assert ds in found, (kind, found)
        for line in LOOK_ALIKES:
            assert not formats & {s.type for s in scan_line(line)}, line


def test_pipeline_redacts_before_tokenizing_and_counts_per_kind(tmp_path):
    src = tmp_path / "code.jsonl"
    kinds = list(PLANTED)
    docs, expected = [], []
    for i, name in enumerate(HOSTS):
        mine = kinds[i :: len(HOSTS)]  # every kind once across the corpus; the look-alikes in the first host
        extra = LOOK_ALIKES if i == 0 else []
        docs.append(_plant(_host(name), [PLANTED[k][0] for k in mine] + extra))
        expected.append(_plant(_host(name), [PLANTED[k][1] for k in mine] + extra))
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    out = tmp_path / "out"
    assert cli(["pretrain", str(src), "-o", str(out), "-j", "2", "--no-progress", "--redact-pii"]) == 0
    import_bridge()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(out / "text_document"))
    enc = encoding()
    assert [enc.decode(ds[i].tolist()[:-1]) for i in range(len(ds))] == expected
    m = json.loads((out / "manifest.json").read_text())
    assert m["pii"]["kinds"] == {k: {"docs": 1, "replaced": 1} for k in sorted(kinds)}

    # off (the default, in every preset): the text goes through untouched
    m0 = pretrain.run(
        pretrain.PretrainConfig(inputs=[str(src)], output=tmp_path / "off", filters=FilterConfig(), progress=False),
        log=lambda s: None,
    )
    assert m0["pii"] is None
    ds0 = IndexedDataset(str(tmp_path / "off" / "text_document"))
    assert [enc.decode(ds0[i].tolist()[:-1]) for i in range(len(ds0))] == docs


@pytest.mark.parametrize("text", ["", "no secrets here\n", "café ☕ at 93.184.216.34\n"])
def test_non_ascii_and_empty(text):
    out, counts = Redactor().redact(text)
    assert out == text.replace("93.184.216.34", "<IP_ADDRESS>")
    assert counts == ({"ipv4": 1} if "93." in text else {})
