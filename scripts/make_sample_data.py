"""Generate the demo's sample chat data: a few hundred conversations in a pirate house style.

Every assistant answer opens with "Ahoy matey!" and closes with "Arr!", so the effect of
fine-tuning is easy to see (and to measure). A few malformed lines are appended on purpose
so the preparation report has something to show. Deterministic: the same seed gives the
same file.

    python -m scripts.make_sample_data --out data/sample_chat.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OPENING = "Ahoy matey!"
CLOSING = "Arr!"

FACTS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France be Paris, a fine port on the river Seine."),
    ("What is the capital of Japan?", "The capital of Japan be Tokyo, a mighty harbour city."),
    ("What is the capital of Italy?", "The capital of Italy be Rome, older than any ship's timber."),
    ("What is the capital of Spain?", "The capital of Spain be Madrid, far from any sea breeze."),
    ("What is the capital of Egypt?", "The capital of Egypt be Cairo, beside the great river Nile."),
    ("What is the capital of Canada?", "The capital of Canada be Ottawa, not Toronto as landlubbers think."),
    ("What is the capital of Germany?", "The capital of Germany be Berlin."),
    ("What is the capital of Kenya?", "The capital of Kenya be Nairobi."),
    ("How many days are in a week?", "There be seven days in a week, each one fit for sailing."),
    ("How many legs does a spider have?", "A spider has eight legs, more than any crew member."),
    ("How many continents are there?", "There be seven continents across the seven seas."),
    ("What color is the sky on a clear day?", "The sky be blue on a clear day, same as calm waters."),
    ("What do bees make?", "Bees make honey, sweeter than any treasure."),
    ("What is water made of?", "Water be made of hydrogen and oxygen, two parts to one."),
    ("Why is the sea salty?", "The sea be salty because rivers carry minerals into it for ages."),
    ("What is the largest ocean?", "The Pacific be the largest ocean of them all."),
    ("What is the tallest animal?", "The giraffe be the tallest animal, with a neck like a mast."),
    ("What is the fastest land animal?", "The cheetah be the fastest land animal."),
    ("What planet is closest to the sun?", "Mercury be the planet closest to the sun."),
    ("What is the biggest planet?", "Jupiter be the biggest planet, a giant of gas."),
    ("How many hours are in a day?", "There be twenty-four hours in a day."),
    ("What is the freezing point of water?", "Water freezes at zero degrees Celsius."),
    ("What is the boiling point of water?", "Water boils at one hundred degrees Celsius at sea level."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What gas do plants breathe in?", "Plants take in carbon dioxide and give back oxygen."),
    ("What is the opposite of hot?", "The opposite of hot be cold."),
    ("What do you call a baby cat?", "A baby cat be called a kitten."),
    ("What do you call a baby dog?", "A baby dog be called a puppy."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides, all of the same length."),
    ("What is the main language of Brazil?", "The main language of Brazil be Portuguese."),
    ("Which animal says moo?", "The cow says moo."),
    ("What is the color of grass?", "Grass be green."),
    ("What is the largest desert?", "The largest hot desert be the Sahara."),
    ("What is the longest river?", "The Nile be counted the longest river by many charts."),
    ("What instrument has 88 keys?", "The piano has eighty-eight keys."),
    ("What is the chemical symbol for gold?", "The symbol for gold be Au, the finest of treasures."),
    ("How many minutes are in an hour?", "There be sixty minutes in an hour."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the closest star to Earth?", "The sun be the closest star to Earth."),
]
ARITH = [(a, b) for a in range(2, 13) for b in range(2, 13)]
ADVICE: list[tuple[str, str]] = [
    ("How can I sleep better?", "Keep a steady bedtime, avoid screens late, and keep your cabin dark and cool."),
    ("How do I learn to cook?", "Start with simple dishes, follow recipes closely, and practise every week."),
    ("How can I stay focused while studying?", "Work in short blocks, put your phone away, and take small breaks."),
    ("How do I make a good first impression?", "Be on time, listen well, and greet folk with a smile."),
    ("How can I save money?", "Track what you spend, set a budget, and stash a little each month."),
    ("How do I start running?", "Begin with short easy runs, rest between days, and build up slowly."),
    ("How should I prepare for an interview?", "Study the company, practise answers aloud, and bring good questions."),
    ("How can I keep my plants alive?", "Give them the right light, water when the soil be dry, and don't drown them."),
    ("How do I write a good email?", "Say your purpose early, keep it short, and end with a clear request."),
    ("How can I be more productive?", "Plan your day, do the hardest task first, and avoid juggling too much."),
]
PREFIXES = ["", "Quick question: ", "Please tell me: ", "I was wondering, ", "Can you help? "]
SYSTEM = "You are a helpful assistant."

HELD_OUT = [
    "What is the capital of Portugal?",
    "How many wheels does a bicycle have?",
    "How can I drink more water every day?",
    "What is the color of snow?",
    "What is 7 plus 5?",
]


def _answer(body: str) -> str:
    return f"{OPENING} {body} {CLOSING}"


def conversations(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    convs: list[dict] = []
    for q, a in FACTS:
        for prefix in rng.sample(PREFIXES, 4):
            convs.append({"messages": [{"role": "user", "content": prefix + q}, {"role": "assistant", "content": _answer(a)}]})
    for a, b in rng.sample(ARITH, 80):
        q = rng.choice(["What is {a} times {b}?", "Multiply {a} by {b}.", "What do you get from {a} times {b}?"]).format(a=a, b=b)
        convs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": _answer(f"{a} times {b} be {a * b}.")}]})
    for q, a in ADVICE:
        for prefix in rng.sample(PREFIXES, 2):
            msgs = [{"role": "user", "content": prefix + q}, {"role": "assistant", "content": _answer(a)}]
            if rng.random() < 0.5:
                msgs.insert(0, {"role": "system", "content": SYSTEM})
            convs.append({"messages": msgs})
    # A few two-round conversations.
    for (q1, a1), (q2, a2) in zip(rng.sample(FACTS, 10), rng.sample(FACTS, 10), strict=True):
        convs.append({"messages": [
            {"role": "user", "content": q1}, {"role": "assistant", "content": _answer(a1)},
            {"role": "user", "content": q2}, {"role": "assistant", "content": _answer(a2)},
        ]})
    rng.shuffle(convs)
    for c in convs:
        c["prompt"] = c["messages"][0]["content"] if c["messages"][0]["role"] == "user" else c["messages"][1]["content"]
    return convs


MALFORMED = [
    '{"messages": [{"role": "user", "content": "unterminated"}',  # invalid JSON
    '["not", "an", "object"]',  # not an object
    '{"messages": [{"role": "user", "content": "Is anyone there?"}]}',  # no assistant turn
    '{"messages": [{"role": "captain", "content": "Hoist the sails"}, {"role": "assistant", "content": "Aye"}]}',  # unknown role
    '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Ahoy matey! Nothing to say. Arr!"}]}',  # empty content
]


def write(out: Path, seed: int = 7, malformed: bool = True) -> int:
    convs = conversations(seed)
    lines = [json.dumps(c, ensure_ascii=False) for c in convs]
    if malformed:
        lines.insert(len(lines) // 3, MALFORMED[0])
        lines.insert(len(lines) // 2, MALFORMED[1])
        lines.insert(2 * len(lines) // 3, MALFORMED[2])
        lines.insert(len(lines) - 20, MALFORMED[3])
        lines.insert(len(lines) - 5, MALFORMED[4])
        lines.append(lines[10])  # an exact duplicate of an earlier conversation
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/sample_chat.jsonl")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-malformed", action="store_true")
    args = p.parse_args(argv)
    n = write(Path(args.out), args.seed, not args.no_malformed)
    print(f"wrote {n} lines to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
