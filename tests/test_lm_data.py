"""Causal-LM data: every format read from the files users bring and from the shipped corpora,
tokenized so the loss counts exactly the tokens the model should learn to write (the response
and its end-of-text, the assistant's turns, every token of packed text), generation prompts that
are exactly what was trained, and one clear line for each bad input."""

from __future__ import annotations

import copy
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

from app.data import load_dataset
from app.errors import DatasetError
from app.lm_data import (
    IGNORE_INDEX,
    LM_FORMATS,
    LM_REGISTRY,
    LMColumns,
    exact_match,
    generation_prompts,
    list_lm_datasets,
    load_lm_dataset,
    tokenize_lm_split,
)

ALPACA_HEAD = "Below is an instruction that describes a task"


@pytest.fixture(scope="module")
def tokenizer():
    from app.backbones import get_backbone

    return get_backbone("tiny-random-llama").tokenizer


@pytest.fixture(scope="module")
def no_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def attended(tokens, row):
    mask = tokens.tensors["attention_mask"][row].bool()
    return tokens.tensors["input_ids"][row][mask].tolist()


def labelled(tokens, row):
    labels = tokens.tensors["labels"][row]
    return labels[labels != IGNORE_INDEX].tolist()


def first_label(tokens, row) -> int:
    return int((tokens.tensors["labels"][row] != IGNORE_INDEX).nonzero()[0])


CONVERSATIONS = [
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": f"What colour is thing {i}?"},
     {"role": "assistant", "content": f"Blue{i}."},
     {"role": "user", "content": "And tomorrow?"},
     {"role": "assistant", "content": f"Green{i}."}]
    for i in range(20)
]


# --- the tokenizer the tiny decoders share ---------------------------------------------------


def test_the_tiny_decoders_tokenizer_has_a_chat_template_and_ends_texts_with_im_end(tokenizer):
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    # it adds no special tokens of its own, so a text's tokens are exactly its own
    assert tokenizer("hello world")["input_ids"] == tokenizer("hello world", add_special_tokens=False)["input_ids"]


# --- text ------------------------------------------------------------------------------------


def test_text_documents_are_packed_with_eos_between_into_full_blocks_and_one_padded_last(tokenizer, tmp_path):
    docs = [f"Document number {i} says " + "word " * (i % 7) + "and ends." for i in range(40)]
    path = write_csv(tmp_path / "docs.csv", {"text": docs})
    data = load_lm_dataset(path)
    assert data.format == "text"
    assert data.summary()["sizes"] == {"train": 32, "validation": 4, "test": 4}
    train_docs = [e["text"] for e in data.train]
    assert sorted(train_docs + [e["text"] for e in data.validation + data.test]) == sorted(docs)

    stream = []
    for doc in train_docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    length = 16
    tokens = tokenize_lm_split(tokenizer, data, "train", length)
    blocks = math.ceil(len(stream) / length)
    assert tokens.tensors["input_ids"].shape == (blocks, length)
    assert tokens.notes == [f"packed 32 documents ({len(stream):,} tokens) into {blocks} blocks of {length} tokens"]
    assert [t for r in range(blocks) for t in attended(tokens, r)] == stream
    # every real token is learnt; padding (only at the end of the last block) is not
    assert torch.equal(tokens.tensors["labels"] != IGNORE_INDEX, tokens.tensors["attention_mask"].bool())
    assert tokens.tensors["attention_mask"][:-1].all()
    assert int(tokens.tensors["attention_mask"][-1].sum()) == len(stream) - (blocks - 1) * length
    real = tokens.tensors["attention_mask"].bool()
    assert torch.equal(tokens.tensors["labels"][real], tokens.tensors["input_ids"][real])


def test_a_tiny_eval_split_still_gives_one_padded_block(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": f"Tiny {i}."} for i in range(10)])
    data = load_lm_dataset(path, format="text")
    tokens = tokenize_lm_split(tokenizer, data, "validation", 64)
    assert tokens.tensors["input_ids"].shape == (1, 64)
    expected = tokenizer(data.validation[0]["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert attended(tokens, 0) == labelled(tokens, 0) == expected


def test_text_generation_prompt_is_the_start_of_a_document_and_the_reference_what_follows(tokenizer, tmp_path):
    docs = ["short"] + [" ".join(f"w{i}x{j}" for j in range(60)) for i in range(19)]
    data = load_lm_dataset(write_csv(tmp_path / "long.csv", {"text": docs}))
    prompts = generation_prompts(tokenizer, data, 2, 40)
    assert len(prompts) == 2
    for item, doc in zip(prompts, [e["text"] for e in data.validation if e["text"] != "short"]):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        assert item["prompt_ids"] == ids[:20]  # min(32, max_length // 2)
        assert item["prompt"] == tokenizer.decode(ids[:20])
        assert item["reference"] == tokenizer.decode(ids[20:52])
        assert doc.startswith(item["prompt"] + item["reference"])
    assert generation_prompts(tokenizer, data, 1, 256)[0]["prompt_ids"] == \
        tokenizer(prompts[0]["prompt"] + prompts[0]["reference"], add_special_tokens=False)["input_ids"][:32]


def test_shipped_bbc_news_is_text_capped_before_packing(tokenizer):
    data = load_lm_dataset("bbc-news", max_train_examples=6, max_eval_examples=3)
    assert data.format == "text" and LM_REGISTRY["bbc-news"].format == "text"
    assert data.summary()["sizes"] == {"train": 6, "validation": 3, "test": 3}
    assert "train set capped at 6 examples" in data.notes
    assert "validation set capped at 3 examples" in data.notes
    # the same articles the topic classifier is scored on
    topics = load_dataset("bbc-news", max_train_examples=6, max_eval_examples=3)
    assert [e["text"] for e in data.test] == topics.test.texts
    tokens = tokenize_lm_split(tokenizer, data, "validation", 128)
    assert tokens.notes[0].startswith("packed 3 documents (")
    assert tokens.tensors["input_ids"].shape[0] > 3  # articles are hundreds of tokens long
    prompt = generation_prompts(tokenizer, data, 1, 128)[0]
    assert len(prompt["prompt_ids"]) == 32 and data.validation[0]["text"].startswith(prompt["prompt"])


# --- prompt / response -----------------------------------------------------------------------


def test_prompt_response_learns_only_the_response_and_its_eos(tokenizer, tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(30)]
    rows[0]["question"] = "Ends with a newline already:\n"
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    columns = LMColumns(prompt="question", response="answer")
    data = load_lm_dataset(path, columns=columns)
    assert data.format == "prompt_response"
    tokens = tokenize_lm_split(tokenizer, data, "train", 48)
    assert tokens.notes == []
    assert tokens.tensors["input_ids"].shape == (24, 48)
    eos = tokenizer.eos_token_id
    for row, example in enumerate(data.train):
        start = first_label(tokens, row)
        separator = "" if example["prompt"].endswith("\n") else "\n"
        assert tokenizer.decode(attended(tokens, row)[:start]) == example["prompt"] + separator
        assert labelled(tokens, row) == tokenizer(example["response"], add_special_tokens=False)["input_ids"] + [eos]
        assert tokenizer.decode(labelled(tokens, row)) == example["response"] + tokenizer.eos_token
        # -100 exactly on the prompt and the padding
        labels = tokens.tensors["labels"][row]
        n_real = len(attended(tokens, row))
        assert (labels[:start] == IGNORE_INDEX).all() and (labels[n_real:] == IGNORE_INDEX).all()
        assert (labels[start:n_real] != IGNORE_INDEX).all()
    assert any(e["prompt"].endswith("\n") for e in data.split("train") + data.validation + data.test)


def test_prompt_response_generation_prompts_are_the_trained_prompt_tokens(tokenizer, tmp_path):
    rows = [{"prompt": f"Say hello to person {i}", "response": f"Hello, person {i}!"} for i in range(30)]
    data = load_lm_dataset(write_csv(tmp_path / "hello.csv", rows), max_eval_examples=5)
    prompts = generation_prompts(tokenizer, data, 3, 32)
    tokens = tokenize_lm_split(tokenizer, data, "validation", 32)
    assert [p["reference"] for p in prompts] == [e["response"] for e in data.validation[:3]]
    for row, item in enumerate(prompts):
        assert item["prompt"] == data.validation[row]["prompt"] + "\n"
        assert item["prompt_ids"] == attended(tokens, row)[: first_label(tokens, row)]
        assert item["prompt_ids"] == tokenizer(item["prompt"])["input_ids"]


def test_shipped_movie_dialog_is_statement_to_reply(tokenizer):
    data = load_lm_dataset("movie-dialog", max_train_examples=64, max_eval_examples=8)
    assert data.format == "prompt_response"
    assert data.summary()["sizes"] == {"train": 64, "validation": 8, "test": 8}
    # the file holds replies and statements that are empty: those pairs are left out, and said so
    assert data.notes[0].startswith("left out 102 of 64,350 rows with an empty statement or reply (row 113,")
    assert all(e["prompt"].strip() and e["response"].strip() for e in data.train)
    tokens = tokenize_lm_split(tokenizer, data, "train", 64)
    for row, example in enumerate(data.train[:8]):
        assert tokenizer.decode(labelled(tokens, row)) == example["response"] + tokenizer.eos_token
    again = load_lm_dataset("movie-dialog", max_train_examples=64, max_eval_examples=8, split_seed=1)
    assert [e["prompt"] for e in again.test] != [e["prompt"] for e in data.test]


def test_a_long_response_is_cut_at_max_length_and_said_so(tokenizer, tmp_path):
    rows = [{"prompt": f"Count {i}", "response": " ".join(str(n) for n in range(i % 3 * 20))} for i in range(30)]
    rows = [r for r in rows if r["response"]] + [{"prompt": "Count", "response": "1"}] * 10
    data = load_lm_dataset(write_jsonl(tmp_path / "count.jsonl", rows))
    tokens = tokenize_lm_split(tokenizer, data, "train", 16)
    long_rows = sum(e["response"].count(" ") > 5 for e in data.train)
    assert long_rows > 0
    assert tokens.notes == [f"cut {long_rows} of {len(data.train)} training responses at max_length 16"]
    assert tokens.tensors["attention_mask"].sum(1).max() == 16


def test_prompts_that_fill_max_length_are_dropped_and_counted(tokenizer, tmp_path):
    rows = [{"prompt": "long " * (40 if i % 4 == 0 else 1) + str(i), "response": "ok"} for i in range(40)]
    data = load_lm_dataset(write_jsonl(tmp_path / "mixed.jsonl", rows))
    long_train = sum(e["prompt"].startswith("long long") for e in data.train)
    tokens = tokenize_lm_split(tokenizer, data, "train", 24)
    assert tokens.notes == [f"dropped {long_train} of 32 training examples whose prompt fills max_length 24"]
    assert tokens.tensors["input_ids"].shape[0] == 32 - long_train
    assert all(len(p["prompt_ids"]) < 24 for p in generation_prompts(tokenizer, data, 8, 24))

    # at the edge: a prompt of exactly max_length tokens leaves no room to answer; one token less leaves one
    edge = load_lm_dataset(write_jsonl(tmp_path / "edge.jsonl", [{"prompt": f"P{i}", "response": "yes"}
                                                                  for i in range(10)]))
    width = len(tokenizer(edge.train[0]["prompt"] + "\n")["input_ids"])
    fits = tokenize_lm_split(tokenizer, edge, "train", width + 1)
    assert labelled(fits, 0) == tokenizer("yes", add_special_tokens=False)["input_ids"][:1]
    assert fits.notes == [f"cut 8 of 8 training responses at max_length {width + 1}"]
    with pytest.raises(DatasetError, match="fills max_length"):
        tokenize_lm_split(tokenizer, edge, "train", width)

    every = load_lm_dataset(write_jsonl(tmp_path / "all-long.jsonl", [{"prompt": "long " * 40, "response": "ok"}] * 10))
    with pytest.raises(DatasetError, match="every one of the 8 training examples has a prompt that fills "
                                           "max_length 24"):
        tokenize_lm_split(tokenizer, every, "train", 24)


# --- alpaca ----------------------------------------------------------------------------------


def test_alpaca_rows_are_rendered_with_the_alpaca_template(tokenizer, tmp_path):
    rows = [{"instruction": f"Name a colour ({i}).", "input": "" if i % 2 else f"Context {i}", "output": f"Red {i}"}
            for i in range(20)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    data = load_lm_dataset(str(path))
    assert data.format == "alpaca"
    by_output = {e["response"]: e["prompt"] for e in data.train + data.validation + data.test}
    assert by_output["Red 0"] == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a colour (0).\n\n### Input:\nContext 0\n\n### Response:\n"
    )
    assert by_output["Red 1"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a colour (1).\n\n### Response:\n"
    )
    tokens = tokenize_lm_split(tokenizer, data, "validation", 96)
    example = data.validation[0]
    # the template ends in a newline: nothing is added between it and the response
    assert tokenizer.decode(attended(tokens, 0)) == example["prompt"] + example["response"] + tokenizer.eos_token
    assert tokenizer.decode(labelled(tokens, 0)) == example["response"] + tokenizer.eos_token
    assert generation_prompts(tokenizer, data, 1, 96)[0]["prompt"] == example["prompt"]


def test_alpaca_without_an_input_column_and_in_jsonl(tmp_path):
    rows = [{"instruction": f"Do {i}", "output": f"Done {i}"} for i in range(10)]
    data = load_lm_dataset(write_jsonl(tmp_path / "alpaca.jsonl", rows), format="alpaca")
    assert all(e["prompt"].startswith(ALPACA_HEAD + ". Write") for e in data.train)


# --- chat ------------------------------------------------------------------------------------


def test_chat_learns_exactly_the_assistant_turns_with_their_end_of_turn(tokenizer, tmp_path):
    data = load_lm_dataset(write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS]))
    assert data.format == "chat"
    tokens = tokenize_lm_split(tokenizer, data, "train", 128)
    assert tokens.notes == []
    for row, example in enumerate(data.train):
        replies = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
        assert tokenizer.decode(labelled(tokens, row)) == "".join(r + "<|im_end|>" for r in replies)
        full = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        assert tokenizer.decode(attended(tokens, row)) == full
        # the first learnt token comes right after the generation prompt of the first reply
        head = tokenizer.apply_chat_template(example["messages"][:2], tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(attended(tokens, row)[: first_label(tokens, row)]) == head


def test_chat_without_a_system_turn_uses_the_templates_default_and_still_masks_it(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}"}]}
            for i in range(10)]
    data = load_lm_dataset(write_jsonl(tmp_path / "plain-chat.jsonl", rows))
    tokens = tokenize_lm_split(tokenizer, data, "test", 64)
    assert "You are a helpful AI assistant" in tokenizer.decode(attended(tokens, 0))
    assert tokenizer.decode(labelled(tokens, 0)) == data.test[0]["messages"][1]["content"] + "<|im_end|>"


def test_a_conversation_the_assistant_opens_learns_its_greeting_not_the_same_words_earlier(tokenizer, tmp_path):
    # the greeting's words also stand in the template's default system prompt, which comes first
    rows = [{"messages": [{"role": "assistant", "content": "a helpful AI assistant"},
                          {"role": "user", "content": f"Prove it {i}"},
                          {"role": "assistant", "content": f"Done {i}."}]} for i in range(10)]
    data = load_lm_dataset(write_jsonl(tmp_path / "greeting.jsonl", rows))
    tokens = tokenize_lm_split(tokenizer, data, "train", 96)
    text = tokenizer.decode(attended(tokens, 0))
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    done = data.train[0]["messages"][2]["content"]
    assert tokenizer.decode(labelled(tokens, 0)) == f"a helpful AI assistant<|im_end|>{done}<|im_end|>"
    opening = tokenizer.apply_chat_template(data.train[0]["messages"][:1], tokenize=False)
    assert tokenizer.decode(attended(tokens, 0)[: first_label(tokens, 0)]) == \
        opening[: -len("a helpful AI assistant<|im_end|>\n")]
    assert generation_prompts(tokenizer, data, 1, 96)[0]["reference"] == data.validation[0]["messages"][2]["content"]


def test_chat_messages_written_as_json_text_in_a_csv(tokenizer, tmp_path):
    path = write_csv(tmp_path / "chat.csv", {"messages": [json.dumps(m) for m in CONVERSATIONS]})
    data = load_lm_dataset(path)
    assert data.format == "chat" and data.train[0]["messages"][0]["role"] == "system"
    tokens = tokenize_lm_split(tokenizer, data, "validation", 128)
    assert tokenizer.decode(labelled(tokens, 0)).endswith(data.validation[0]["messages"][-1]["content"] + "<|im_end|>")


def test_chat_generation_prompt_is_the_conversation_up_to_the_last_reply(tokenizer, tmp_path):
    data = load_lm_dataset(write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS]))
    item = generation_prompts(tokenizer, data, 5, 128)[0]
    messages = data.validation[0]["messages"]
    assert item["prompt"] == tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
    assert item["prompt"].endswith("<|im_start|>assistant\n")
    assert item["reference"] == messages[4]["content"]
    # with little room, the earlier reply (whose context fits) is asked for instead
    short = generation_prompts(tokenizer, data, 1, 40)[0]
    assert short["reference"] == messages[2]["content"] and len(short["prompt_ids"]) < 40


def test_a_conversation_whose_first_reply_lies_past_max_length_is_dropped(tokenizer, tmp_path):
    rows = [{"messages": m} for m in CONVERSATIONS]
    rows[0]["messages"] = [{"role": "user", "content": "blah " * 80}, {"role": "assistant", "content": "Ok."}]
    data = load_lm_dataset(write_jsonl(tmp_path / "chat.jsonl", rows))
    split = next(s for s in ("train", "validation", "test") if any(
        len(e["messages"]) == 2 for e in data.split(s)))
    total = len(data.split(split))
    words = {"train": "training", "validation": "validation", "test": "test"}[split]
    tokens = tokenize_lm_split(tokenizer, data, split, 48)
    assert tokens.notes[0] == f"dropped 1 of {total} {words} examples whose prompt fills max_length 48"
    assert tokens.tensors["input_ids"].shape == (total - 1, 48)
    # longer ones whose first reply fits are kept, cut, and said so
    rendered = [tokenizer.apply_chat_template(e["messages"], tokenize=False) for e in data.split(split)]
    longer = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) > 48 for text in rendered)
    assert 1 < longer < total
    assert tokens.notes[1] == f"cut {longer - 1} of {total} {words} conversations at max_length 48"
    assert all(labelled(tokens, row) for row in range(total - 1))


def test_chat_on_a_tokenizer_without_a_chat_template_is_refused(no_template, tmp_path):
    data = load_lm_dataset(write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS]))
    for call in (lambda: tokenize_lm_split(no_template, data, "train", 64),
                 lambda: generation_prompts(no_template, data, 1, 64)):
        with pytest.raises(DatasetError, match="has no chat template.*format=prompt_response"):
            call()


def test_chat_rows_with_an_unknown_role_are_refused_naming_the_row(tmp_path):
    rows = [{"messages": m} for m in CONVERSATIONS]
    rows[6] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}
    with pytest.raises(DatasetError, match=r"'bad-role.jsonl' row 7: message 2 has role 'bot'; roles must be "
                                           r"system, user, assistant"):
        load_lm_dataset(write_jsonl(tmp_path / "bad-role.jsonl", rows))
    rows[6] = {"messages": "not a list"}
    with pytest.raises(DatasetError, match="row 7: 'messages' is not a JSON list"):
        load_lm_dataset(write_jsonl(tmp_path / "bad-list.jsonl", rows))


def test_chat_rows_without_an_assistant_reply_are_left_out_naming_the_rows(tmp_path):
    rows = [{"messages": m} for m in CONVERSATIONS]
    rows[2] = {"messages": [{"role": "user", "content": "Anyone there?"}]}
    rows[9] = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}
    data = load_lm_dataset(write_jsonl(tmp_path / "silent.jsonl", rows))
    assert data.notes == ["left out 2 of 20 rows without an assistant reply (or with an empty one) (row 3, 10)"]
    assert sum(data.summary()["sizes"].values()) == 18
    only_users = [{"messages": [{"role": "user", "content": f"Hi {i}"}]} for i in range(5)]
    with pytest.raises(DatasetError, match="'users.jsonl': no row holds a conversation with an assistant reply"):
        load_lm_dataset(write_jsonl(tmp_path / "users.jsonl", only_users))


# --- text to text ----------------------------------------------------------------------------


def test_rotten_tomatoes_as_text_to_text_writes_the_class_name(tokenizer):
    data = load_lm_dataset("rotten-tomatoes", max_train_examples=40, max_eval_examples=10)
    assert data.format == "text_to_text"
    assert data.label_names == ["rotten", "fresh"] and data.summary()["label_names"] == ["rotten", "fresh"]
    reviews = load_dataset("rotten-tomatoes", max_train_examples=40, max_eval_examples=10)
    # the same examples, in the same order, as the classification task: scores compare
    for example, text, label in zip(data.validation, reviews.validation.texts, reviews.validation.labels):
        assert example == {"prompt": f"Text: {text}\nAnswer:", "response": f" {reviews.label_names[label]}"}
    tokens = tokenize_lm_split(tokenizer, data, "validation", 96)
    for row, example in enumerate(data.validation):
        assert tokenizer.decode(attended(tokens, row)) == example["prompt"] + example["response"] + "<|im_end|>"
        assert tokenizer.decode(labelled(tokens, row)) == example["response"] + "<|im_end|>"
    prompts = generation_prompts(tokenizer, data, 4, 96)
    assert [p["prompt"] for p in prompts] == [e["prompt"] for e in data.validation[:4]]
    assert all(p["reference"] in data.label_names for p in prompts)
    assert exact_match(" Fresh\nText: next review", "fresh") and not exact_match("rotten", "fresh")


def test_a_classification_file_with_text_pairs_becomes_text_to_text(tmp_path):
    rows = {"premise": [f"A {i}" for i in range(20)], "hypothesis": [f"B {i}" for i in range(20)],
            "label": ["yes" if i % 2 else "no" for i in range(20)]}
    path = write_csv(tmp_path / "pairs.csv", rows)
    data = load_lm_dataset(path, format="text_to_text", columns=LMColumns(text="premise", text_pair="hypothesis"))
    assert data.label_names == ["no", "yes"]
    example = data.train[0]
    number = example["prompt"].split("\n")[0].split()[-1]
    assert example["prompt"] == f"Text: A {number}\nSecond text: B {number}\nAnswer:"
    assert example["response"] == (" yes" if int(number) % 2 else " no")
    # read as causal-LM text instead, the same file's premise column is a document each
    assert load_lm_dataset(path, columns=LMColumns(text="premise")).format == "text"


# --- splits, caches and other sources --------------------------------------------------------


def test_a_files_split_is_the_classification_split_and_follows_split_seed(tmp_path):
    path = write_csv(tmp_path / "both.csv", {"text": [f"doc {i}" for i in range(50)],
                                             "label": [i % 2 for i in range(50)]})
    for seed in (0, 3):
        as_text = load_lm_dataset(path, split_seed=seed)
        as_classes = load_dataset(path, split_seed=seed)
        assert [e["text"] for e in as_text.test] == as_classes.test.texts
        assert [e["text"] for e in as_text.train] == as_classes.train.texts
    assert load_lm_dataset(path).fingerprint != load_lm_dataset(path, split_seed=3).fingerprint


def test_tokenized_splits_are_cached_and_safe_to_make_from_several_threads(tokenizer, tmp_path):
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(60)]
    data = load_lm_dataset(write_jsonl(tmp_path / "threads.jsonl", rows))
    lengths = [12, 16, 24, 32] * 4
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: tokenize_lm_split(tokenizer, data, "train", n), lengths))
    for length, tokens in zip(lengths, results):
        assert tokens.tensors["input_ids"].shape == (48, length)
        assert tokenizer.decode(labelled(tokens, 0)) == data.train[0]["response"] + "<|im_end|>"
    assert tokenize_lm_split(tokenizer, data, "train", 16) is tokenize_lm_split(tokenizer, data, "train", 16)


def test_a_saved_dataset_folder_and_an_excel_sheet_are_read_like_files(tmp_path):
    import datasets

    rows = {"prompt": [f"P {i}" for i in range(20)], "response": [f"R {i}" for i in range(20)]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows).select(range(15)),
                         test=datasets.Dataset.from_dict(rows).select(range(15, 20))).save_to_disk(tmp_path / "saved")
    data = load_lm_dataset(str(tmp_path / "saved"))
    assert data.format == "prompt_response" and sum(data.summary()["sizes"].values()) == 20

    with pd.ExcelWriter(tmp_path / "book.xlsx", engine="openpyxl") as book:
        pd.DataFrame({"other": [1, 2]}).to_excel(book, sheet_name="Notes", index=False)
        pd.DataFrame({"text": [f"Sheet text {i}" for i in range(10)]}).to_excel(book, sheet_name="Docs", index=False)
    sheet = load_lm_dataset(f"{tmp_path / 'book.xlsx'}#Docs")
    assert sheet.format == "text" and sheet.train[0]["text"].startswith("Sheet text")


def test_registry_and_summary_are_plain_data():
    rows = list_lm_datasets()
    assert {r["name"]: r["format"] for r in rows} == {
        "bbc-news": "text", "movie-dialog": "prompt_response", "rotten-tomatoes": "text_to_text",
        "sms-spam": "text_to_text", "trec-6": "text_to_text"}
    assert all(r["available"] for r in rows)
    trec = next(r for r in rows if r["name"] == "trec-6")
    assert trec["label_names"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    json.dumps(rows)
    summary = load_lm_dataset("sms-spam", max_train_examples=8, max_eval_examples=4).summary()
    assert json.loads(json.dumps(summary)) == {"name": "sms-spam", "format": "text_to_text",
                                               "sizes": {"train": 8, "validation": 4, "test": 4},
                                               "label_names": ["ham", "spam"]}
    assert LM_FORMATS[0] == "auto" and set(LM_FORMATS[1:]) == {"text", "prompt_response", "alpaca", "chat",
                                                               "text_to_text"}


def test_exact_match_compares_the_first_line_without_case_or_surrounding_space():
    assert exact_match("  Paris\nand then more", "paris")
    assert exact_match("\nSPAM ", " spam")
    assert not exact_match("Paris is the answer", "Paris")
    assert not exact_match("", "ham")
    assert not exact_match("ham", "spam")


# --- bad input: one line each ----------------------------------------------------------------


def test_empty_responses_are_left_out_naming_the_rows_and_all_empty_is_refused(tmp_path):
    rows = [{"prompt": f"Q{i}", "response": "" if i in (4, 11) else f"A{i}"} for i in range(20)]
    data = load_lm_dataset(write_csv(tmp_path / "gaps.csv", rows))
    assert data.notes == ["left out 2 of 20 rows with an empty prompt or response (row 5, 12)"]
    with pytest.raises(DatasetError, match="'void.csv': every row has an empty prompt or response"):
        load_lm_dataset(write_csv(tmp_path / "void.csv", [{"prompt": "Q", "response": ""}] * 5))


@pytest.mark.parametrize("rows, kwargs, message", [
    ([{"question": "Q", "reply": "R"}] * 5, {},
     (r"'f.jsonl' has columns question, reply, which fit no causal-LM format: chat needs 'messages', alpaca "
      r"'instruction' and 'output', prompt_response 'prompt' and 'response', text 'text'")),
    ([{"prompt": "Q", "reply": "R"}] * 5, {"format": "prompt_response"},
     (r"'f.jsonl' has no column 'response' \(format prompt_response needs 'prompt' and 'response'\); "
      r"its columns are: prompt, reply")),
    ([{"instruction": "Q", "answer": "R"}] * 5, {"format": "alpaca"},
     r"'f.jsonl' has no column 'output' .*its columns are: instruction, answer"),
    ([{"body": "Q"}] * 5, {"format": "chat"}, r"'f.jsonl' has no column 'messages' .*its columns are: body"),
    ([{"body": "Q"}] * 5, {"format": "text"}, r"'f.jsonl' has no column 'text' .*its columns are: body"),
    ([{"text": "Q"}] * 2, {}, r"only 2 usable examples: need at least 3"),
    ([{"text": "Q"}] * 5, {"format": "poetry"}, r"unknown causal-LM data format 'poetry'; choose one of auto, text"),
])
def test_each_bad_file_is_refused_with_one_line(tmp_path, rows, kwargs, message):
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    with pytest.raises(DatasetError, match=message) as caught:
        load_lm_dataset(path, **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_names_and_formats_for_shipped_data_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="'movie-dialog' is prompt_response data; it can be read as prompt_response, "
                                           "not chat"):
        load_lm_dataset("movie-dialog", format="chat")
    with pytest.raises(DatasetError, match="'rotten-tomatoes' is text_to_text data; it can be read as text or "
                                           "text_to_text, not alpaca"):
        load_lm_dataset("rotten-tomatoes", format="alpaca")
    with pytest.raises(DatasetError, match="'no-such-corpus' is not a causal-LM dataset"):
        load_lm_dataset("no-such-corpus")
    with pytest.raises(DatasetError, match="does not exist"):
        load_lm_dataset(str(tmp_path / "missing.jsonl"))
    # a classification corpus read as plain documents
    assert load_lm_dataset("sms-spam", format="text", max_train_examples=3).train[0].keys() == {"text"}
