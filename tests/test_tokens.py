from digest.tokens import nfkc, title_id, title_key, tokenize, words


def test_tokens_are_folded_stemmed_and_split_on_punctuation() -> None:
    tokens = tokenize("Diffusion-Models, KV_cache!")
    assert [t.folded for t in tokens] == ["diffusion", "models", "kv", "cache"]
    assert [t.stem for t in tokens] == ["diffus", "model", "kv", "cach"]


def test_offsets_point_into_the_nfkc_text() -> None:
    text = "ﬁne-tuning Straße"  # a ligature and a sharp s
    shown = nfkc(text)
    for t in tokenize(text):
        assert shown[t.start:t.end].casefold().startswith(t.folded[:2])
    assert words(text) == ["fine", "tuning", "strasse"]


def test_title_key_ignores_case_and_punctuation() -> None:
    assert title_key("Attention Is All You Need!") == title_key("attention is all  you need")
    assert title_id("Attention Is All You Need") == title_id("ATTENTION is all you need.")
    assert title_id("Attention Is All You Need") != title_id("Attention Is Not All You Need")
