"""Planted documents for prep's curation stages, one per drop reason, and the e2e settings.

``PLANTED[reason]`` is a document that the e2e curation settings (``E2E_CURATION``) drop
under exactly that reason (it passes every rule that runs before it); ``PII_DOC`` is kept,
with one match of each PII kind redacted. tests/conftest.py plants them beside the e2e
corpus (so every dashboard panel of a drop reason has data), and tests/unit/test_quality.py
checks each against the rules, so a rule or threshold change that stops a planted document
from reaching its panel fails a fast unit test first.

The thresholds of ``E2E_CURATION`` are set outside what the python-docs corpus measures
(its real documents pass all of them), so the e2e run's other counts stay those of a run
without curation.
"""

from __future__ import annotations

E2E_CURATION = {
    "pii": {},
    "quality": {
        "gopher": {"min_words": 10, "max_words": None, "min_mean_word_length": 3, "max_mean_word_length": 15,
                   "max_symbol_word_ratio": 0.2, "max_ellipsis_line_ratio": 0.3, "max_bullet_line_ratio": 0.9,
                   "min_alpha_word_ratio": 0.5, "min_stop_words": 1, "max_duplicate_line_ratio": 0.6,
                   # Python's own stop words too: the corpus holds tiny modules with no English in them.
                   "stop_words": ["the", "be", "to", "of", "and", "that", "have", "with",
                                  "if", "def", "class", "import", "return", "true"],
                   "max_duplicate_line_char_ratio": 0.6, "max_duplicate_paragraph_ratio": 0.6,
                   "max_duplicate_paragraph_char_ratio": 0.6, "max_top_ngram_ratio": {2: 0.3},
                   "max_duplicate_ngram_ratio": {5: 0.7}},
        # Code has no terminal punctuation and many short lines: those two line rules stay off here.
        "c4": {"terminal_punctuation": False, "min_words_per_line": None, "min_lines": 1, "max_curly_braces": 500},
    },
    "language": {"languages": ["en", "de", "fr"], "keep": ["en"], "min_confidence": 0.7},
    "decontam": {"ngram": 8},  # + path: the eval file conftest writes (EVAL_ROWS)
}

EVAL_ROWS = [
    {"question": "Which colour did the lighthouse keeper paint the rowing boat on the first windy morning of spring?",
     "answer": "A pale shade of sea green."},
    {"question": "How many lanterns hung above the old bridge?", "answer": "Seven."},
]

PLANTED = {
    "quality.c4_curly_braces": "The template below is mostly placeholders, which C4 would not keep: " + "{} " * 501,
    "quality.c4_too_few_lines": ("Please enable JavaScript in your browser to see this page.\n"
                                 "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
                                 "By using this site you agree to our privacy policy and terms of use."),
    "quality.word_count": "The extraordinarily talkative parrot repeated everything to the neighbours.",
    "quality.mean_word_length": ("the incomprehensibilities characteristically counterrevolutionaries "
                                 "internationalisation uncharacteristically institutionalisation "
                                 "electroencephalographs misinterpretations disproportionately "
                                 "compartmentalisation"),
    "quality.symbol_ratio": ("We loved the trip to the coast #travel #sea #sun #beach #holiday #summer and we "
                             "will go back next year with family."),
    "quality.ellipsis_lines": ("And then the music slowly faded into the quiet night air...\n"
                               "We waited for the band to return to the stage once more...\n"
                               "Nobody came back, so we walked home along the river path...\n"
                               "It was still a wonderful evening with good friends."),
    "quality.bullet_lines": ("- the red apples from the orchard\n- the green pears from the market\n"
                             "- fresh bread with butter and honey\n- a jar of cherry jam for the picnic"),
    "quality.alpha_words": ("The totals for the year were 1234 5678 9012 3456 7890 1357 2468 3690 4812 "
                            "5934 6045 7156 8267 9378."),
    "quality.stop_words": ("Bright colourful kites dance above green meadows while children laugh loudly "
                           "outside today."),
    "quality.duplicate_lines": "\n".join(["We sing the same old song again tonight."] * 6
                                         + ["Then everybody goes home to sleep."]),
    # Two long paragraphs and one short line repeated as its own paragraph six times: 5 of 8
    # paragraphs repeat (0.62 > 0.6) while only 5 of 16 lines do, so the line rule keeps it.
    "quality.duplicate_paragraphs": "\n\n".join(
        ["The harbour wakes early in the summer months.\nFishing boats leave before the sun is up.\n"
         "Gulls follow them out past the stone breakwater.\nThe market opens when the first boats return.\n"
         "By noon the quay smells of salt and diesel.",
         "In the afternoon the town is quiet again.\nShopkeepers pull their awnings down against the heat.\n"
         "Children swim from the slipway by the lifeboat station.\nOld men play cards outside the cafe.\n"
         "The evening ferry brings visitors from the islands."]
        + ["Subscribe to our newsletter."] * 6),
    "quality.top_ngram": ("I think the cat the cat the cat the cat the cat the cat sat on the mat with a dog "
                          "and two birds."),
    "quality.duplicate_ngram": " ".join(["Every morning the baker opens his small shop near the harbour "
                                         "before sunrise."] * 3),
    "lang.other": ("Das englische Wort „the“ ist der bestimmte Artikel, und Kinder lernen es schon sehr früh "
                   "in der Schule."),
    "lang.low_confidence": ("Hello and welcome, mein Freund, bonjour mon ami, the weather is gut today, "
                            "très bien."),
    "decontam.ngram": ("Yesterday somebody asked which colour did the lighthouse keeper paint the rowing boat, "
                       "and nobody in the village could remember the answer."),
}

PII_DOC = ("Contact the support team at help.desk@example.org or call +44 20 7946 0958; the server at "
           "192.0.2.10 and 2001:db8:85a3::8a2e:370:7334 answers requests from the office.")
