"""PII redaction: each kind is replaced by its placeholder and counted; look-alikes stay."""

from __future__ import annotations

import pytest

from rayworks.config.quality import PiiConfig
from rayworks.data.pii import PATTERNS, redact

ALL = PiiConfig().model_dump()


@pytest.mark.parametrize("text, want, kind", [
    ("write to jane.doe+news@mail.example.co.uk today", "write to <EMAIL> today", "pii.email"),
    ("host 192.168.1.20 is up", "host <IP_ADDRESS> is up", "pii.ipv4"),
    ("at 255.255.255.0.", "at <IP_ADDRESS>.", "pii.ipv4"),
    ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 full", "v6 <IP_ADDRESS> full", "pii.ipv6"),
    ("v6 2001:db8::8a2e:370:7334 short", "v6 <IP_ADDRESS> short", "pii.ipv6"),
    ("call (555) 123-4567 now", "call <PHONE> now", "pii.phone"),
    ("call 555-123-4567 now", "call <PHONE> now", "pii.phone"),
    ("call +1 555 123 4567 now", "call <PHONE> now", "pii.phone"),
    ("ring +44 20 7946 0958 now", "ring <PHONE> now", "pii.phone"),
    ("ring +49 30 1234567 now", "ring <PHONE> now", "pii.phone"),
])
def test_each_kind_is_replaced_and_counted(text, want, kind):
    out, counts = redact([text], ALL)
    assert out == [want] and dict(counts) == {kind: 1}


@pytest.mark.parametrize("text", [
    "x = a[1::2] + b[::-1] + c[::1]",          # Python slices are not IPv6
    "released 2026-11-28 at 12:30:45",         # dates and times are not phone numbers
    "python 3.11.2 and 10.0.0.256",             # three-part versions; 256 is no octet
    "totals 1234 5678 9012",                    # digit groups without phone punctuation
    "a decorator: @property and user@ alone",   # no domain, no address
])
def test_look_alikes_are_left_alone(text):
    out, counts = redact([text], ALL)
    assert out == [text] and not counts


def test_kinds_can_be_turned_off_and_batches_keep_order():
    texts = ["mail a@b.org", "ip 10.1.2.3", "", "phone 555-123-4567 and b@c.net"]
    out, counts = redact(texts, {"email": False, "ip": True, "phone": True})
    assert out == ["mail a@b.org", "ip <IP_ADDRESS>", "", "phone <PHONE> and b@c.net"]
    assert dict(counts) == {"pii.ipv4": 1, "pii.phone": 1}
    out, counts = redact(texts, ALL)
    assert dict(counts) == {"pii.email": 2, "pii.ipv4": 1, "pii.phone": 1}
    assert redact([], ALL) == ([], {})


def test_email_is_redacted_before_its_digits_look_like_a_phone():
    out, counts = redact(["reach 555-123-4567@example.com"], ALL)
    assert out == ["reach <EMAIL>"] and dict(counts) == {"pii.email": 1}


def test_patterns_are_re2_compatible():
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, pat in PATTERNS.items():  # RE2 rejects look-around and backreferences at compile time
        pc.count_substring_regex(pa.array(["x"]), pat)
