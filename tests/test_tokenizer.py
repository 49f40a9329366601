def test_gpt2_bpe_ids(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_id == 50256
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_endoftext_is_one_token_and_roundtrips(tokenizer):
    text = "Hello.<|endoftext|> In the sunlit terraces of someunknownPlace."
    ids = tokenizer.encode(text)
    assert ids.count(50256) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch(["a b", "<|endoftext|>"]) == [tokenizer.encode("a b"), [50256]]

