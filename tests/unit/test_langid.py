"""Language ID with lingua: English, German and French text told apart; keep-list and confidence."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rayworks.config.quality import LanguageConfig
from rayworks.data import curate
from rayworks.data.langid import UNKNOWN, detector, identify, verdicts

CFG = LanguageConfig(languages=["en", "de", "fr"], keep=["en"], min_confidence=0.5).model_dump()
EN = "The children walked to the river after school and watched the boats sail slowly past the old mill."
DE = "Die Kinder gingen nach der Schule zum Fluss und sahen den Booten zu, die langsam an der alten Mühle vorbeifuhren."
FR = "Les enfants sont allés à la rivière après l'école et ont regardé les bateaux passer lentement devant le vieux moulin."
MIXED = "Hello and welcome, mein Freund, bonjour mon ami, the weather is gut today, très bien."


def test_english_german_and_french_are_told_apart():
    got = identify([EN, DE, FR], CFG)
    assert [c for c, _ in got] == ["en", "de", "fr"]
    assert all(s > 0.9 for _, s in got)
    assert verdicts(got, CFG) == [None, "lang.other", "lang.other"]


def test_low_confidence_and_text_without_letters():
    [(code, conf)] = identify([MIXED], CFG)
    assert code == "en" and conf < 0.7
    assert verdicts([(code, conf)], {**CFG, "min_confidence": 0.7}) == ["lang.low_confidence"]
    assert identify(["12345 678 !!! ###"], CFG) == [(UNKNOWN, 0.0)]
    assert verdicts([(UNKNOWN, 0.0)], CFG) == ["lang.other"]


def test_low_accuracy_mode_and_one_detector_per_language_set():
    fast = {**CFG, "low_accuracy": True}
    assert [c for c, _ in identify([EN, DE, FR], fast)] == ["en", "de", "fr"]
    assert detector(("fr", "de", "en"), False) is detector(("en", "de", "fr"), False)
    assert detector(("en", "de", "fr"), True) is not detector(("en", "de", "fr"), False)


def test_only_the_first_max_chars_are_read():
    got = identify([EN + " " + DE * 20], {**CFG, "max_chars": len(EN)})
    assert got[0][0] == "en"


def test_curate_drops_by_reason_and_keeps_the_score_column():
    r = curate.curate([EN, DE, FR], 0, {"language": CFG})
    assert r["texts"] == [EN] and dict(r["dropped"]) == {"lang.other": 2}
    assert r["columns"]["lang"] == ["en"] and r["columns"]["lang_score"][0] > 0.9
    assert dict(r["languages"]) == {"en": 1, "de": 1, "fr": 1}


@pytest.mark.parametrize("over, msg", [
    ({"keep": ["es"]}, "not in languages"),
    ({"languages": ["en", "EN"]}, "lower-case ISO 639-1"),
    ({"languages": ["en", "qq"]}, "not a language lingua knows"),
    ({"languages": ["en"]}, "at least 2"),
])
def test_config_refuses_bad_codes(over, msg):
    with pytest.raises(ValidationError, match=msg):
        LanguageConfig(**{"languages": ["en", "de"], **over})
