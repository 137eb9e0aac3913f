import pytest
import torch

import helpers
from helpers.arithmetic import (
    ArithmeticConfig,
    ArithmeticModel,
    count_carries,
    decode,
    encode,
    evaluate,
    format_problem,
    make_problems,
    number_index,
    parse_problem,
    place_values,
    predict,
    problem_batch,
    solve,
    training_batches,
)
from helpers.train import fit


def test_the_three_writings():
    assert format_problem(123, "+", 45, "plain") == ("123+45=", "168;")
    assert format_problem(123, "+", 45, "reversed") == ("123+45=", "861;")
    assert format_problem(123, "+", 45, "abacus") == ("321+54=", "861;")
    assert format_problem(12, "*", 34, "abacus") == ("21*43=", "804;")
    assert decode(encode(["12+3=15;"], 10)[0]) == "12+3=15;.."


def test_problem_batch_writes_given_problems_with_a_loss_on_the_answer_only():
    cfg = ArithmeticConfig(representation="reversed", max_digits=3)
    x, y = problem_batch(cfg, torch.tensor([[123, 45], [7, 5]]))
    assert x.shape == y.shape == (2, 12)                                       # sequence_length 13, shifted by one
    assert decode(x[0]).startswith("123+45=861;") and decode(x[1]).startswith("7+5=21;")
    # y[t] is the token after x[t]: the answer's first digit is predicted at the '=' (position len(prompt) - 1)
    assert y[0].tolist()[:6] == [-100] * 6 and decode(y[0][6:10]) == "861;" and (y[0][10:] == -100).all()
    assert y[1].tolist()[:3] == [-100] * 3 and decode(y[1][3:6]) == "21;" and (y[1][6:] == -100).all()


def test_zero_padding_writes_every_operand_at_full_width():
    assert format_problem(123, "+", 45, "reversed", width=5) == ("00123+00045=", "861;")
    assert format_problem(123, "+", 45, "plain", width=5) == ("00123+00045=", "168;")
    assert format_problem(123, "+", 45, "abacus", width=4) == ("3210+5400=", "861;")
    with pytest.raises(ValueError, match="width=2"):
        format_problem(123, "+", 4, "plain", width=2)
    cfg = ArithmeticConfig(representation="reversed", max_digits=3, zero_pad=True)
    x, y = problem_batch(cfg, torch.tensor([[7, 5], [123, 45]]))
    assert decode(x[0]).startswith("007+005=21;") and decode(x[1]).startswith("123+045=861;")
    assert decode(y[0][7:10]) == "21;" and (y[0][:7] == -100).all()       # loss on the answer only
    # the model is asked in the writing it was trained on: an untrained one still answers every problem
    torch.manual_seed(0)
    assert len(predict(ArithmeticModel(cfg), [(7, 5), (123, 45)])) == 2


def test_scratchpad_lists_the_partial_products():
    assert format_problem(12, "*", 34, "abacus", scratchpad=True) == ("21*43=", "84+063=804;")
    assert format_problem(12, "*", 34, "plain", scratchpad=True) == ("12*34=", "48+360=408;")
    assert format_problem(99, "*", 0, "abacus", scratchpad=True) == ("99*0=", "0=0;")
    with pytest.raises(ValueError, match="multiplication"):
        format_problem(1, "+", 2, "abacus", scratchpad=True)
    cfg = ArithmeticConfig(op="*", max_digits=2, scratchpad=True, max_place=4, sampling="uniform")
    x, y = training_batches(cfg, 256)(0)
    for row_x, row_y in zip(x, y, strict=True):
        text = (decode(row_x) + decode(row_y[-1:].clamp(min=0))).split(";")[0]
        prompt, partials, product = text.split("=")
        a, b = (int(n[::-1]) for n in prompt.split("*"))
        assert sum(int(p[::-1]) for p in partials.split("+")) == int(product[::-1]) == a * b


def test_place_values_count_digits_inside_each_number():
    ids = encode(["321+54=861;"])
    assert place_values(ids).tolist() == [[1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 0]]


def test_number_index_tells_the_numbers_apart():
    ids = encode(["21*43=804;.."])
    assert number_index(ids).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]]
    model = ArithmeticModel(ArithmeticConfig(op="*", max_digits=2, number_embedding=True))
    assert model.wnum is not None and model(ids).shape == (1, 12, 15)


def test_count_carries():
    assert count_carries(torch.tensor([999, 12345, 5, 0]), torch.tensor([1, 67890, 4, 0])).tolist() == [3, 3, 0, 0]


def test_test_problems_are_distinct_and_never_trained_on():
    test = make_problems(2000, 3, seed=1)
    assert len({tuple(p) for p in test.tolist()}) == 2000
    assert int(test.max()) < 1000
    exact = make_problems(500, 3, seed=2, sampling="exact", exclude=test)
    assert bool((exact >= 100).all()) and not {tuple(p) for p in exact.tolist()} & {tuple(p) for p in test.tolist()}
    held_out = {tuple(p) for p in torch.cat([test, exact]).tolist()}
    for representation in ("plain", "reversed", "abacus"):
        cfg = ArithmeticConfig(representation=representation, max_digits=3)
        get_batch = training_batches(cfg, 512, exclude=torch.cat([test, exact]))
        for step in range(5):
            x, y = get_batch(step)
            for row_x, row_y in zip(x, y, strict=True):
                text = decode(row_x) + decode(row_y[-1:].clamp(min=0))
                prompt, answer = text.split("=")
                a, b = prompt.split("+")
                if representation == "abacus":
                    a, b = a[::-1], b[::-1]
                answer = answer.split(";")[0]
                answer = answer[::-1] if representation != "plain" else answer
                assert (int(a), int(b)) not in held_out
                assert int(answer) == int(a) + int(b)  # the answers it learns are right
                # The loss sees the answer and its end mark only.
                targets = row_y[row_y != -100]
                assert decode(targets) == format_problem(int(a), "+", int(b), representation)[1]


def test_make_problems_rejects_impossible_requests():
    with pytest.raises(ValueError, match="too many"):
        make_problems(100, 1)
    with pytest.raises(ValueError, match="1 to 9"):
        make_problems(10, 12)
    with pytest.raises(ValueError, match="sampling"):
        make_problems(10, 3, sampling="roundish")


def test_uniform_sampling_spreads_over_all_problems():
    test = make_problems(2000, 2, seed=3, sampling="uniform")
    one_digit = (test < 10).all(dim=1).sum().item()
    assert 5 <= one_digit <= 40  # about 1% of the 10,000 problems have two 1-digit numbers
    assert make_problems(2000, 2, seed=3)[:, 0].lt(10).float().mean() > 0.3  # "by_length": half are 1-digit


def test_config_checks():
    with pytest.raises(ValueError, match="representation"):
        ArithmeticConfig(representation="roman")
    with pytest.raises(ValueError, match="op"):
        ArithmeticConfig(op="-")
    with pytest.raises(ValueError, match="block_size"):
        ArithmeticConfig(max_digits=5, block_size=12)
    with pytest.raises(ValueError, match="absolute_positions"):
        ArithmeticConfig(representation="plain", absolute_positions=False)
    assert ArithmeticConfig(representation="plain").absolute_positions
    abacus = ArithmeticModel(ArithmeticConfig())
    assert not abacus.gpt.wpe.weight.requires_grad and not abacus.gpt.wpe.weight.any()  # positions switched off


@pytest.mark.parametrize("bad", ["12a+3", "", "   ", "+", "1234+5", "12-3", "12*3", "12+3+4", None])
def test_solve_rejects_bad_input_with_a_clear_message(bad):
    model = ArithmeticModel(ArithmeticConfig(max_digits=3))
    with pytest.raises(ValueError, match="accepts"):
        solve(model, bad)


def test_parse_problem():
    cfg = ArithmeticConfig(max_digits=3)
    assert parse_problem(" 12 + 345 = ", cfg) == (12, "+", 345)
    assert parse_problem("007+1", cfg) == (7, "+", 1)  # leading zeros do not make a number longer


@pytest.fixture(scope="module")
def trained():
    """A small abacus model trained for a few seconds on 2-digit addition."""
    torch.manual_seed(0)
    cfg = ArithmeticConfig(max_digits=2, n_layer=2, n_head=2, n_embd=64, block_size=16, max_place=3, random_offset=False)
    test = make_problems(300, 2, seed=1)
    model = ArithmeticModel(cfg)
    history = fit(model, training_batches(cfg, 128, exclude=test), steps=400, lr=3e-3, progress=False, device="cpu")
    return model, test, history


def test_a_small_model_learns_two_digit_addition(trained):
    model, test, history = trained
    assert history.train_loss[-1] < 0.1 * history.train_loss[0]
    accuracy = evaluate(model, test)
    assert accuracy > 0.9  # measured: 1.0
    assert evaluate(model, [f"{a}+{b}" for a, b in test[:50].tolist()]) == evaluate(model, test[:50])
    assert solve(model, "12+34") == "46" and solve(model, "99+9") == "108"


def test_checkpoint_reload_gives_the_same_answers(trained, tmp_path):
    model, test, _ = trained
    path = helpers.save_checkpoint(model, tmp_path / "arith.pt", accuracy=0.5)
    loaded = helpers.load_checkpoint(path)
    assert isinstance(loaded, ArithmeticModel) and loaded.config == model.config
    assert loaded.checkpoint_extra == {"accuracy": 0.5}
    assert predict(loaded, test) == predict(model, test)
    assert solve(loaded, "57+68") == solve(model, "57+68")


def test_reversed_answers_are_learned_once_the_operands_are_zero_padded():
    """With learned absolute positions, the reversed writing is learned when every operand has the same width
    (the digits of one place at fixed positions), and not at the same budget without the zeros."""
    test = make_problems(300, 3, seed=1)
    accuracy = {}
    for zero_pad in (False, True):
        torch.manual_seed(0)
        cfg = ArithmeticConfig(representation="reversed", max_digits=3, n_layer=2, n_head=2, n_embd=64, block_size=16,
                               zero_pad=zero_pad)
        model = ArithmeticModel(cfg)
        fit(model, training_batches(cfg, 128, exclude=test), steps=400, lr=3e-3, progress=False, device="cpu")
        accuracy[zero_pad] = evaluate(model, test)
    assert accuracy[True] > 0.9 and accuracy[False] < accuracy[True] - 0.3, accuracy


def test_held_out_problems_are_disjoint_and_as_notebook_04_draws_them():
    from helpers.arithmetic import _keys, held_out_problems, make_problems

    test, test_full, val = held_out_problems(50, 20, 4)
    assert test.shape == test_full.shape == (50, 2) and val.shape == (20, 2)
    assert torch.equal(test, make_problems(50, 4, seed=1))
    assert (test_full >= 1000).all()  # exactly max_digits digits
    keys = torch.cat([_keys(test), _keys(test_full), _keys(val)])
    assert keys.unique().numel() == 120  # 50 + 50 + 20, none shared
