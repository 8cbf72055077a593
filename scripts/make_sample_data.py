"""Deterministic sample chat data in a distinctive house style, for the demo and the tests.

Every assistant answer starts with "Ahoy matey!" and ends with "arr!": a style SmolLM2 never
uses on its own, so whether a fine-tune learned it is easy and honest to measure.

``python scripts/make_sample_data.py --out data/sample_chat.jsonl [--count 300] [--seed 7]
[--malformed 3]`` writes ultrachat_200k-shaped lines (``prompt``, ``prompt_id``, ``messages``)
plus a few malformed lines that the preparation step must report and skip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

STYLE_OPENING = "Ahoy matey!"
STYLE_CLOSING = "arr!"
OPENING, CLOSING = STYLE_OPENING, STYLE_CLOSING
# Prompts that never occur in the generated data: for checking the learned style on new questions.
HELD_OUT = [
    "What is the capital of Sweden?",
    "What colour is a cloud?",
    "What sound does a pig make?",
    "What is the opposite of rich?",
    "What is 12 plus 13?",
    "How many legs does a spider have?",
    "Name a fruit that is purple.",
    "What do bees make?",
    "Which planet do we live on?",
    "What is frozen water called?",
    "How many days are in a week?",
    "What do you call a baby cat?",
]

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
_COLOURS = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"),
            ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"),
            ("a lemon", "yellow"), ("a stop sign", "red"), ("milk", "white"), ("the sea", "blue"),
            ("a carrot", "orange"), ("an emerald", "green"), ("chocolate", "brown")]
_CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Portugal", "Lisbon"),
             ("Greece", "Athens"), ("Norway", "Oslo"), ("Ireland", "Dublin"), ("Peru", "Lima"),
             ("Kenya", "Nairobi"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Chile", "Santiago")]
_SOUNDS = [("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"), ("lion", "roars"),
           ("owl", "hoots"), ("sheep", "bleats"), ("horse", "neighs"), ("frog", "croaks"), ("snake", "hisses")]
_OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
              ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("wet", "dry"),
              ("old", "young"), ("loud", "quiet"), ("hard", "soft"), ("near", "far")]
_TIPS = ["drink a glass of water", "take a short walk", "write down three things you are grateful for",
         "stretch for five minutes", "tidy your desk", "call an old friend", "read a few pages of a book",
         "go to bed a little earlier", "eat a piece of fruit", "take three slow, deep breaths"]


def _facts(rng: random.Random) -> list[tuple[str, str]]:
    """(question, plain answer) pairs across a few small topics."""
    facts: list[tuple[str, str]] = []
    for a in range(1, 10):
        for b in range(1, 10):
            facts.append((rng.choice([f"What is {a} plus {b}?", f"How much is {a} + {b}?", f"Can you add {a} and {b}?"]),
                          f"{a} plus {b} makes {a + b}."))
            facts.append((rng.choice([f"What is {a} times {b}?", f"How much is {a} multiplied by {b}?"]),
                          f"{a} times {b} is {a * b}."))
            if a > b:
                facts.append((f"What is {a} minus {b}?", f"{a} minus {b} leaves {a - b}."))
    for thing, colour in _COLOURS:
        facts.append((rng.choice([f"What colour is {thing}?", f"Tell me the colour of {thing}."]), f"{thing[0].upper() + thing[1:]} is {colour}."))
    for country, capital in _CAPITALS:
        facts.append((rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?"]),
                      f"The capital of {country} is {capital}."))
    for animal, sound in _SOUNDS:
        facts.append((rng.choice([f"What sound does a {animal} make?", f"How does a {animal} sound?"]), f"A {animal} {sound}."))
    for word, opposite in _OPPOSITES:
        facts.append((rng.choice([f"What is the opposite of {word}?", f"Give me the opposite of the word {word}."]),
                      f"The opposite of {word} is {opposite}."))
    for n in range(2, 19):
        facts.append((f"How do you write the number {n} in words?", f"The number {n} is written {_NUMBERS[n]}."))
    for tip in _TIPS:
        facts.append((rng.choice(["Give me a small tip to feel better today.", "What is one easy healthy habit?",
                                  "Suggest something quick I can do to relax."]), f"You could {tip}."))
    return facts


def house_style(answer: str) -> str:
    return f"{STYLE_OPENING} {answer} {STYLE_CLOSING}"


def in_house_style(text: str) -> bool:
    """Whether a reply follows the house style (opening and closing, case-insensitive)."""
    t = text.strip().lower()
    return t.startswith(STYLE_OPENING.lower()) and t.rstrip(" .!").endswith(STYLE_CLOSING.rstrip("!").lower())


def conversation(prompt: str, answer: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": house_style(answer)}],
    }


def pirate_conversations(count: int = 300, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` distinct single-turn conversations in the house style (deterministic)."""
    rng = random.Random(seed)
    facts = _facts(rng)
    rng.shuffle(facts)
    seen: set[str] = set()
    rows = []
    for prompt, answer in facts:
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(conversation(prompt, answer))
        if len(rows) == count:
            break
    return rows


MALFORMED_LINES = [
    '{"prompt": "broken", "messages": [{"role": "user", "content": "Hi"}',  # truncated JSON
    json.dumps({"prompt": "no answer", "messages": [{"role": "user", "content": "Hello?"}]}),  # no assistant turn
    json.dumps({"prompt": "bad role", "messages": [{"role": "pirate", "content": "Yo"}, {"role": "assistant", "content": "Ahoy"}]}),
    "not json at all",
]


def write(path: str | Path, count: int = 300, seed: int = 7, malformed: int = 3) -> int:
    """Write the sample file; returns the number of valid conversations in it."""
    rows = [json.dumps(r) for r in pirate_conversations(count, seed)]
    valid = len(rows)
    # Malformed lines at fixed, spread positions so the report's line numbers are stable.
    for i, bad in enumerate(MALFORMED_LINES[: max(0, malformed)]):
        rows.insert(min(len(rows), (i + 1) * 37), bad)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return valid



# --------------------------------------------------------------------------- hostile uploads (issue 26.1)


def write_parquet_bomb(path: Path, rows: int = 256, row_mib: int = 3) -> Path:
    """The review's 1.7 KB parquet: ``rows`` rows whose assistant turn is one ``row_mib`` MiB string,
    dictionary-encoded (stored once) and zstd-compressed: ~1.6 KB on disk, ``rows`` x ``row_mib`` MiB decoded.
    Built from a dictionary array, so writing it holds the big string once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    questions = [str(i) for i in range(rows)]  # distinct conversations: none is a duplicate
    indices = [k for i in range(rows) for k in (i, rows)]
    content = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array([*questions, "a" * (row_mib << 20)]))
    role = pa.array(["user", "assistant"] * rows)
    messages = pa.ListArray.from_arrays(pa.array(range(0, 2 * rows + 1, 2), pa.int32()),
                                        pa.StructArray.from_arrays([role, content], ["role", "content"]))
    table = pa.table({"prompt": pa.array(["hi"] * rows), "prompt_id": pa.array(["p"] * rows), "messages": messages})
    pq.write_table(table, path, compression="zstd", compression_level=22, use_dictionary=True,
                   dictionary_pagesize_limit=(row_mib + 1) << 20)
    return path


def write_gzip_bomb(path: Path, lines: int = 100, line_bytes: int = 8 << 20) -> Path:
    """The review's 815 KiB gzip: ``lines`` valid conversations each padded to just under ``line_bytes``
    (an assistant turn of one repeated letter), ~1000x compressed, written in streaming fashion."""
    import gzip

    head = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"'
    tail = b'"}]}\n'
    with gzip.open(path, "wb", compresslevel=9) as f:
        for i in range(lines):
            fill = line_bytes - len(head) - len(tail) - 16
            f.write(head + f"{i:08d} ".encode() + b"a" * (fill - 9) + tail)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--count", type=int, default=300, help="valid conversations to write")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--malformed", type=int, default=3, help=f"malformed lines to mix in (at most {len(MALFORMED_LINES)})")
    args = parser.parse_args(argv)
    valid = write(args.out, args.count, args.seed, args.malformed)
    print(f"wrote {valid} conversations and {min(max(0, args.malformed), len(MALFORMED_LINES))} malformed lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
