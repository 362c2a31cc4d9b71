"""Write the small chat dataset shipped in the package (airflow_provider_sft/core/data/).

Every conversation is generated from the facts and phrasings below, written for
this project (Apache-2.0 like the rest of it). Deterministic: re-running it
reproduces the file byte for byte.

    python scripts/make_chat_dataset.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "airflow_provider_sft" / "core" / "data" / "chat_sft_sample.jsonl"

SYSTEM_PROMPTS = [
    "You are a concise, friendly assistant. Answer in one short sentence.",
    "You are a helpful assistant for a small team. Keep answers brief and correct.",
    "You are a patient tutor. Give a direct answer, then stop.",
]

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Germany": "Berlin",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Australia": "Canberra",
    "India": "New Delhi",
    "Thailand": "Bangkok",
    "Hungary": "Budapest",
    "Belgium": "Brussels",
    "Netherlands": "Amsterdam",
    "Czechia": "Prague",
    "Argentina": "Buenos Aires",
    "Colombia": "Bogota",
    "Morocco": "Rabat",
}

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "full": "empty",
    "happy": "sad",
    "strong": "weak",
    "wet": "dry",
    "young": "old",
    "loud": "quiet",
    "high": "low",
    "near": "far",
    "hard": "soft",
    "rich": "poor",
    "thick": "thin",
    "first": "last",
    "inside": "outside",
}

COLORS = {
    "the sky on a clear day": "blue",
    "fresh grass": "green",
    "a ripe banana": "yellow",
    "snow": "white",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "a lemon": "yellow",
    "a stop sign": "red",
    "milk": "white",
}

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def conversation(rng: random.Random, turns: list[tuple[str, str]]) -> dict:
    messages = []
    if rng.random() < 0.8:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for user, assistant in turns:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages}


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    if rng.random() < 0.5:
        return rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."]).format(
            a=a, b=b
        ), f"{a} plus {b} is {a + b}."
    big, small = max(a, b), min(a, b)
    return rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."]).format(
        a=big, b=small
    ), f"{big} minus {small} is {big - small}."


def build() -> list[dict]:
    rng = random.Random(20261125)
    rows: list[dict] = []
    for country, capital in CAPITALS.items():
        question = rng.choice(
            ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."]
        )
        rows.append(
            conversation(rng, [(question.format(c=country), f"The capital of {country} is {capital}.")])
        )
    for word, opposite in OPPOSITES.items():
        rows.append(
            conversation(
                rng,
                [(f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{opposite}'.")],
            )
        )
        rows.append(
            conversation(
                rng,
                [(f"Give me an antonym for '{opposite}'.", f"An antonym for '{opposite}' is '{word}'.")],
            )
        )
    for thing, color in COLORS.items():
        rows.append(
            conversation(rng, [(f"What color is {thing}?", f"{thing[0].upper()}{thing[1:]} is {color}.")])
        )
    for index, day in enumerate(WEEKDAYS):
        after, before = WEEKDAYS[(index + 1) % 7], WEEKDAYS[index - 1]
        rows.append(conversation(rng, [(f"Which day comes after {day}?", f"{after} comes after {day}.")]))
        rows.append(conversation(rng, [(f"Which day comes before {day}?", f"{before} comes before {day}.")]))
    for _ in range(70):
        rows.append(conversation(rng, [arithmetic(rng)]))
    for number, word in enumerate(NUMBER_WORDS):
        rows.append(
            conversation(
                rng, [(f"Write the number {number} as a word.", f"The number {number} is '{word}'.")]
            )
        )
    for word in ["cat", "model", "train", "river", "python", "airflow", "token", "green", "stone", "cloud"]:
        rows.append(
            conversation(rng, [(f"Spell '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'.")])
        )
        rows.append(
            conversation(
                rng,
                [(f"How many letters are in '{word}'?", f"'{word}' has {len(word)} letters.")],
            )
        )
    for _ in range(25):
        country, capital = rng.choice(list(CAPITALS.items()))
        rows.append(
            conversation(
                rng,
                [
                    (
                        "Hello! Can you help me with a quick question?",
                        "Of course. What would you like to know?",
                    ),
                    (f"What is the capital of {country}?", f"The capital of {country} is {capital}."),
                    ("Thank you!", "You're welcome. Have a good day!"),
                ],
            )
        )
    for _ in range(15):
        question, answer = arithmetic(rng)
        rows.append(
            conversation(
                rng,
                [
                    (question, answer),
                    ("And double that?", "Doubling it gives " + str(2 * int(answer.split()[-1][:-1])) + "."),
                ],
            )
        )
    rng.shuffle(rows)
    return rows


def main() -> None:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations to {OUT}")


if __name__ == "__main__":
    main()
