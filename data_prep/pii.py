"""Secrets and personal data in code, replaced by placeholders before tokenization (`--redact-pii`).

What is replaced, with BigCode's placeholders for StarCoder:
- `email` -> <EMAIL>: local@domain.tld. Kept: the reserved documentation and test domains
  (example.com/.org/.net and their subdomains, .example, .test, .invalid, .localhost; RFC 2606/6761),
  `git@host` (an SSH remote, not a mailbox) and "domains" ending in a file extension (`icon@2x.png`).
- `ipv4`, `ipv6` -> <IP_ADDRESS>: only global (public) addresses. Kept: private, loopback,
  link-local, multicast and documentation ranges (192.0.2.0/24, 2001:db8::/32, ...), the public DNS
  resolvers everyone hard-codes (8.8.8.8, 1.1.1.1, ...), and version strings that look like
  addresses: "version", "release", "section", "rfc" or "oid" within the 32 characters before, the
  number glued to `v`, `-`, `==`, `>=`, `<=`, `~=`, `^` or `@` (`v1.2.3.4`, `pkg==2.0.0.1`), or the
  first three numbers single digits
  (`7.1.4.34`, `8.2.4.45`: versions and section numbers far more often than addresses; this keeps
  the test address 1.2.3.4 too). An IPv6 candidate needs a digit and three groups
  (`A::B` is C++, not an address).
- keys and tokens -> <KEY>: the formats of detect-secrets' plugins (AWS access key ids, GitHub,
  GitLab, Slack, Stripe, OpenAI, SendGrid, PyPI and npm tokens, Google API keys, JSON Web Tokens,
  PEM private key blocks), with detect-secrets' regular expressions where it has one.
- `password` -> <PASSWORD>: a quoted literal assigned to a name that says password/passwd/pwd/
  secret/api key/access key/auth or access token/client secret/private key (detect-secrets'
  KeywordDetector idea), unless the value is a template or reference (`${X}`, `{{x}}`, `%s`, `<x>`,
  `os.environ`), one repeated character (`********`), shorter than 6 characters, or holds the
  keyword itself (`HASH_PASSWORDS = "hashPasswords"` is a label).

Not replaced, on purpose: bare high-entropy strings. That is where hashes in lock files, UUIDs and
base64 test data live; detect-secrets' entropy plugins flag them by the thousand (170,091 findings
in 1.6 MB of Go and Java sources here), BigCode had to filter those out again, and a real key in
one of the known formats is caught by its format.

Why not detect-secrets itself: its line-by-line scan runs at 0.056 MB/s here (1.6 MB of Go and
Java in 29 s), about two hundred times slower than the tokenizer, so it cannot sit inside the
pipeline; the tests check that it flags the planted secrets that this module replaces.

Speed: the work is on the UTF-8 bytes (every pattern is ASCII, so byte offsets never split a
character) and every kind is found from something a fast C scan can look for, never by a regular
expression tried at every position: key formats from runs of 20+ token characters (one
bytes.translate and a substring search), e-mails from "@", IPv4 from a dot followed by numbers,
IPv6 from two close colons, passwords from five keywords in the lower-cased bytes; only those
places get a regular expression. About 50 MB/s on Go and Java; the cost in the pipeline is in
bench/data_prep_throughput.md.
"""

from __future__ import annotations

import ipaddress
import re

VERSION = 1  # bump when a pattern changes: a resumed run must redact the same way

PLACEHOLDER = {"email": b"<EMAIL>", "ipv4": b"<IP_ADDRESS>", "ipv6": b"<IP_ADDRESS>", "password": b"<PASSWORD>"}
KEY = b"<KEY>"

KEPT_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
KEPT_EMAIL_TLDS = ("example", "test", "invalid", "localhost", "local")
FILE_TLDS = frozenset(
    "png jpg jpeg gif svg ico webp bmp css js mjs ts tsx jsx json html htm xml txt md rst py go java rs "
    "c h cc cpp hpp sh yml yaml toml lock zip gz tar pdf".split()
)
DNS_RESOLVERS = frozenset(
    "8.8.8.8 8.8.4.4 1.1.1.1 1.0.0.1 9.9.9.9 149.112.112.112 208.67.222.222 208.67.220.220 "
    "2001:4860:4860::8888 2001:4860:4860::8844 2606:4700:4700::1111 2606:4700:4700::1001".split()
)

# Keys and tokens: every format is a run of at least MIN_RUN characters of [A-Za-z0-9_-] (JWT: its
# header; SendGrid: the part after "SG."). Such runs are found without a regular expression
# (bytes.translate to two classes, then a substring search for MIN_RUN run characters, which skips
# ahead MIN_RUN bytes at a time), and only their starts are compared with the formats' prefixes.
MIN_RUN = 20
_RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_RUNMAP = bytes(ord("a") if b in _RUN_CHARS else ord(" ") for b in range(256))
_RUN = b"a" * MIN_RUN
# (kind, prefixes of the run, pattern matched at the run's start); from detect-secrets' plugins
# (aws, github_token, gitlab_token, slack, stripe, openai, sendgrid, pypi_token, npm, jwt) where
# it has them, plus Google API keys.
_KEYS: list[tuple[str, tuple[bytes, ...], re.Pattern[bytes]]] = [
    ("aws_access_key", (b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"A3T"),
     re.compile(rb"(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9_-])")),
    ("github_token", (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"),
     re.compile(rb"(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{36}|github_pat_[A-Za-z0-9_]{82})(?![A-Za-z0-9_])")),
    ("gitlab_token", (b"glpat-", b"gldt-", b"glft-", b"glsoat-", b"glrt-", b"glcbt-", b"glptt-"),
     re.compile(rb"(?:glpat|gldt|glft|glsoat|glrt|glcbt|glptt)-[A-Za-z0-9_\-]{20,50}(?![\w-])")),
    ("slack_token", (b"xoxa-", b"xoxb-", b"xoxp-", b"xoxo-", b"xoxs-", b"xoxr-"),
     re.compile(rb"xox[abposr]-(?:\d+-)+[a-zA-Z0-9]+")),
    ("stripe_key", (b"sk_live_", b"rk_live_"), re.compile(rb"[rs]k_live_[0-9a-zA-Z]{24,99}")),
    ("openai_key", (b"sk-",),
     re.compile(rb"sk-(?:[A-Za-z0-9_-]*[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|proj-[A-Za-z0-9_-]{40,})")),
    ("pypi_token", (b"pypi-AgE",), re.compile(rb"pypi-AgE[A-Za-z0-9_-]{70,}")),
    ("npm_token", (b"npm_",), re.compile(rb"npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])")),
    ("google_api_key", (b"AIza",), re.compile(rb"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    ("jwt", (b"eyJ",), re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
]  # fmt: skip
_PREFIXES = tuple(p for _, ps, _ in _KEYS for p in ps)
_SENDGRID = re.compile(rb"SG\.[a-zA-Z0-9_-]{22}\.[a-zA-Z0-9_-]{43}(?![a-zA-Z0-9_-])")
_SLACK_HOOK = re.compile(rb"https://hooks\.slack\.com/services/T\w+/B\w+/\w+")
_PEM = re.compile(rb"-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----.*?(?:-----END[A-Z ]{0,20} PRIVATE KEY-----|\Z)", re.S)

_EMAIL_DOMAIN = re.compile(rb"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))(?![\w.-]*\w)")
_EMAIL_LOCAL = re.compile(rb"[A-Za-z0-9._%+-]{1,64}\Z")
# IPv4: found from its second dot-number (a literal "." starts the pattern: the regex engine skips
# to dots), then extended back over the first number.
_IPV4_TAIL = re.compile(rb"\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                        rb"\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")  # fmt: skip
_IPV4_HEAD = re.compile(rb"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\Z")
# IPv6: found from two colons with at most 4 hex digits between, then extended both ways.
_IPV6_ANCHOR = re.compile(rb":[0-9A-Fa-f]{0,4}:")
_IPV6_BACK = re.compile(rb"[0-9A-Fa-f:]{0,39}\Z")
_IPV6_FWD = re.compile(rb"[0-9A-Fa-f:]*")
_VERSION_WORDS = (b"version", b"section", b"rfc", b"release", b"oid")
_VERSION_GLUE = (b"v", b"V", b"==", b">=", b"<=", b"~=", b"^", b"@", b"-")
# Keyword assignments: the lower-cased text is searched for these, then the identifier around the
# hit must end with one of _NAME_ENDS (password, api_key, client_secret, ...) and be assigned a
# quoted literal.
_KEYWORDS = (b"pass", b"pwd", b"secret", b"token", b"api")
_IDENT_BACK = re.compile(rb"[a-z0-9_]{0,64}\Z")
_ASSIGN = re.compile(rb"([a-z0-9_-]{1,80})[\"']?\s{0,4}(?::=|=>|=|:)\s{0,4}(?:[rbuf])?([\"'])([^\"'\s\\]{6,200})\2")
_TEMPLATE = (b"${", b"{{", b"%s", b"%(", b"<", b">", b"os.environ", b"getenv", b"process.env", b"$(")


def _keep_email(domain: bytes, tld: bytes, local: bytes) -> bool:
    d, t = domain.lower(), tld.lower().decode()
    if t in FILE_TLDS or t in KEPT_EMAIL_TLDS:
        return True
    if any(d == k.encode() or d.endswith(b"." + k.encode()) for k in KEPT_EMAIL_DOMAINS):
        return True
    return local == b"git"


def _version_like(b: bytes, start: int) -> bool:
    before = b[max(0, start - 32) : start].lower()
    return any(w in before for w in _VERSION_WORDS) or before.endswith(_VERSION_GLUE)


def _public_ip(s: str) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and str(ip) not in DNS_RESOLVERS


Span = tuple[int, int, bytes, str]  # start, end, placeholder, kind


class Redactor:
    """`redact(text)` -> (text with placeholders, {kind: replacements}). Works on UTF-8 bytes: every
    pattern is ASCII, so byte offsets never split a character."""

    KINDS = ("email", "ipv4", "ipv6", "password", "private_key", "sendgrid_key", "slack_webhook",
             *(k for k, _, _ in _KEYS))  # fmt: skip

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        b = text.encode("utf-8", "surrogatepass")
        out, counts = self.redact_bytes(b)
        return (text, counts) if out is b else (out.decode("utf-8", "surrogatepass"), counts)

    def redact_bytes(self, b: bytes) -> tuple[bytes, dict[str, int]]:
        spans: list[Span] = []
        self._keys(b, spans)
        if b"PRIVATE KEY-----" in b:
            spans += [(m.start(), m.end(), KEY, "private_key") for m in _PEM.finditer(b)]
        if b"hooks.slack.com/services/" in b:
            spans += [(m.start(), m.end(), KEY, "slack_webhook") for m in _SLACK_HOOK.finditer(b)]
        if b"@" in b:
            self._emails(b, spans)
        for m in _IPV4_TAIL.finditer(b):
            h = _IPV4_HEAD.search(b, max(0, m.start() - 3), m.start())
            if h is None or (h.start() > 0 and b[h.start() - 1 : h.start()] in (b".", b"_") + _DIGITS_LETTERS):
                continue
            ip = b[h.start() : m.end()]
            # a.b.c.d with a, b and c single digits reads as a version or a section number
            # (7.1.4.34, 8.2.4.45) far more often than as an address
            if ip[1:2] == b"." and ip[3:4] == b"." and ip[5:6] == b".":
                continue
            if _public_ip(ip.decode()) and not _version_like(b, h.start()):
                spans.append((h.start(), m.end(), PLACEHOLDER["ipv4"], "ipv4"))
        self._ipv6(b, spans)
        self._passwords(b, spans)
        if not spans:
            return b, {}
        return _apply(b, spans)

    @staticmethod
    def _keys(b: bytes, spans: list[Span]) -> None:
        tr = b.translate(_RUNMAP)
        pos = tr.find(_RUN)
        while pos != -1:
            s = tr.rfind(b" ", 0, pos) + 1
            e = tr.find(b" ", pos)
            e = len(b) if e == -1 else e
            if b.startswith(_PREFIXES, s):
                for kind, prefixes, pat in _KEYS:
                    if b.startswith(prefixes, s) and (m := pat.match(b, s)):
                        spans.append((s, m.end(), KEY, kind))
                        break
            elif s >= 3 and b[s - 3 : s] == b"SG." and (m := _SENDGRID.match(b, s - 3)):
                spans.append((s - 3, m.end(), KEY, "sendgrid_key"))
            pos = tr.find(_RUN, e)

    @staticmethod
    def _emails(b: bytes, spans: list[Span]) -> None:
        at = b.find(b"@")
        while at != -1:
            m = _EMAIL_DOMAIN.match(b, at)
            if m:
                lm = _EMAIL_LOCAL.search(b, max(0, at - 64), at)
                if lm and lm.group().strip(b".") and not _keep_email(m.group(1), m.group(2), lm.group()):
                    spans.append((lm.start(), m.end(), PLACEHOLDER["email"], "email"))
                at = b.find(b"@", m.end())
            else:
                at = b.find(b"@", at + 1)

    @staticmethod
    def _ipv6(b: bytes, spans: list[Span]) -> None:
        end = 0
        for m in _IPV6_ANCHOR.finditer(b):
            if m.start() < end:
                continue
            back = _IPV6_BACK.search(b, max(0, m.start() - 39), m.start())
            s = back.start() if back else m.start()
            e = _IPV6_FWD.match(b, m.start()).end()
            end = e
            if (s > 0 and b[s - 1 : s] in _DIGITS_LETTERS + (b".", b"_")) or b[e : e + 1] in _DIGITS_LETTERS + (b"_",):
                continue
            cand = b[s:e].strip(b":") if b[s:e].endswith(b":") and not b[s:e].endswith(b"::") else b[s:e]
            groups = [g for g in cand.split(b":") if g]
            if len(groups) < 3 or not any(48 <= c <= 57 for c in cand):
                continue  # "A::B" is C++, "12:30" a time
            if _public_ip(cand.decode()):
                spans.append((s, s + len(cand), PLACEHOLDER["ipv6"], "ipv6"))

    @staticmethod
    def _passwords(b: bytes, spans: list[Span]) -> None:
        low = b.lower()  # ASCII only: same offsets
        seen = -1
        for kw in _KEYWORDS:
            p = low.find(kw)
            while p != -1:
                back = _IDENT_BACK.search(low, max(0, p - 64), p)
                s = back.start() if back else p
                m = _ASSIGN.match(low, s) if s > seen else None
                if m and m.group(1).endswith(_NAME_ENDS):
                    seen = s
                    v = b[m.start(3) : m.end(3)]
                    # a value holding the keyword itself is a label ("hashPasswords"), not a secret
                    if not any(t in v for t in _TEMPLATE) and len(set(v)) > 1 and kw not in v.lower():
                        spans.append((m.start(3), m.end(3), PLACEHOLDER["password"], "password"))
                p = low.find(kw, p + len(kw))


_DIGITS_LETTERS = tuple(bytes([c]) for c in _RUN_CHARS if c not in b"_-")
_NAME_ENDS = tuple(
    x.encode()
    for x in (
        "password", "passwd", "passphrase", "pass", "pwd", "secret", "token", "apikey", "api_key", "api-key",
        "accesskey", "access_key", "secretkey", "secret_key", "privatekey", "private_key", "authtoken",
        "auth_token", "accesstoken", "access_token", "clientsecret", "client_secret",
    )
    for x in (x, x + "s")
)  # fmt: skip


def _apply(b: bytes, spans: list[Span]) -> tuple[bytes, dict[str, int]]:
    """Replace non-overlapping spans (the earliest, then the longest, wins an overlap)."""
    spans.sort(key=lambda s: (s[0], -s[1]))
    parts: list[bytes] = []
    counts: dict[str, int] = {}
    pos = 0
    for start, end, placeholder, kind in spans:
        if start < pos:
            continue
        parts += [b[pos:start], placeholder]
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    parts.append(b[pos:])
    return b"".join(parts), counts
