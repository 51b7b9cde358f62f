import pytest

from vidprior.unic.prompt_rules import has_motion, looks_english, rule_reason

RULES = {"english_only": True, "min_words": 3, "max_words": 12, "require_motion": True}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a golden retriever running along the beach at sunset", None),
        ("two kids jumped into the lake", None),
        ("a cat", "too_short"),
        ("a dog running " + "very " * 20 + "fast", "too_long"),
        ("一只小狗在草地上奔跑", "non_english"),
        ("Un perro corriendo en la playa con el sol", "non_english"),
        ("un chat qui court dans le jardin avec une balle", "non_english"),
        ("Ein Hund läuft über die Wiese", "non_english"),
        ("portrait of an old fisherman, oil painting, 4k", "no_motion"),
        ("camera slowly orbits around a marble statue", "no_motion"),
    ],
)
def test_rule_reason(text, reason):
    verdict = rule_reason(text, **RULES)
    assert (verdict[0] if verdict else None) == reason


def test_stems_cover_inflections():
    assert all(has_motion(t) for t in ["he runs", "she ran", "running water", "skipped stones hop"])
    assert not has_motion("a quiet library with wooden shelves")


def test_english_detection_on_plain_ascii():
    assert looks_english("the quick brown fox jumps over the lazy dog")
    assert not looks_english("o menino corre na praia com o cachorro")
    assert not looks_english("")


def test_rules_can_be_switched_off():
    assert rule_reason("一只小狗", english_only=False, min_words=1, max_words=9, require_motion=False) is None
