#!/usr/bin/env python3
"""Deterministic instruction-task generator for Temper.

Generates instruction-following tasks whose answers are short, canonical and
single-line, so that fine-tuning success can be measured as exact-match
accuracy on a held-out test split.

Task families (the ``task`` field of every record):

    arithmetic       add / subtract / multiply small non-negative integers
    counting         letters in a word, words in a sentence, occurrences of a letter
    string_transform reverse, uppercase, lowercase, first letters, remove vowels
    sorting          numbers ascending / descending, words alphabetically
    unit_conversion  km->m, kg->g, hours->minutes, m->cm, minutes->seconds, l->ml
    json_format      extract fields into a JSON object with a fixed canonical layout

Every family has several phrasings of the instruction; some phrasings put the
data in the alpaca ``input`` field, others inline it in the instruction.

Usage:
    python3 datasets/generate.py                 # (re)write datasets/tasks/*.jsonl
    python3 datasets/generate.py --check         # verify committed files are up to date
    python3 datasets/generate.py --alpaca-out /tmp/bench.jsonl --n 50000 --seed 7
                                                 # one alpaca JSONL for benchmarks,
                                                 # with long outputs mixed in

Standard library only; output is byte-identical across runs and Python >= 3.9.
"""

import argparse
import filecmp
import json
import os
import random
import sys
import tempfile

# ---------------------------------------------------------------------------
# Fixed parameters of the committed dataset. Changing any of these changes the
# committed files (run without arguments, then commit).
# ---------------------------------------------------------------------------
TASKS_SEED = 20240611
N_TRAIN = 2000
N_TEST = 200
SYSTEM_FRACTION = 0.25

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS_DIR = os.path.join(HERE, "tasks")
TASK_FILES = (
    "train.alpaca.jsonl",
    "test.alpaca.jsonl",
    "train.messages.jsonl",
    "test.messages.jsonl",
)

# ---------------------------------------------------------------------------
# Word lists (lowercase ASCII).
# ---------------------------------------------------------------------------
WORDS = """
apple banana cherry garden planet window river mountain pencil rocket
castle forest island candle butter summer winter autumn spring ocean
silver golden marble shadow thunder lantern harbor meadow valley desert
jungle orange purple yellow violet copper bridge tunnel market school
teacher student doctor farmer painter writer singer dancer sailor pilot
kitchen bedroom library museum theater station airport village city
bottle basket blanket button camera carpet ladder mirror needle pillow
rabbit turtle monkey tiger lion zebra giraffe dolphin eagle falcon
parrot penguin spider beetle salmon lobster pepper carrot potato tomato
onion garlic lemon mango melon peach plum grape walnut almond
cookie muffin noodle pizza salad sugar honey coffee cotton velvet
wizard dragon knight prince queen giant robot engine magnet rainbow
comet galaxy meteor nebula orbit crystal pebble boulder canyon glacier
volcano breeze storm cloud frost puzzle riddle secret signal number
letter answer question pocket jacket helmet saddle anchor compass
hammer shovel wrench bucket kettle spoon fork plate table chair
sofa shelf drawer clock watch guitar piano violin trumpet drum
flute poem story novel chapter journal paper canvas brush color
simple quiet gentle brave clever happy sunny windy rapid silent
little bright heavy narrow hollow smooth tender humble eager fancy
""".split()

NAMES = """
Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Liam Maria
Noah Olivia Peter Quinn Rosa Samuel Tara Umar Vera Walter Xenia Yusuf Zoe
Aaron Bella Carlos Diana Ethan Fiona George Hannah Isaac Julia Kevin Laura
Marcus Nina Oscar Paula Ravi Sofia Thomas Ursula Victor Wendy Yara Zach
Amir Beatrice Chen Dmitri Elena Felix Gloria Hugo Ingrid Jonas Keiko Leon
Mei Nadia Omar Priya Rafael Sven Tomas Anika Bruno Clara
""".split()

CITIES = """
Paris London Berlin Madrid Rome Lisbon Vienna Prague Warsaw Oslo Stockholm
Helsinki Dublin Athens Cairo Nairobi Lagos Tokyo Seoul Beijing Delhi Mumbai
Bangkok Jakarta Manila Sydney Auckland Toronto Chicago Boston Denver Seattle
Lima Bogota Santiago Quito Havana Montreal Zurich Geneva Munich Hamburg Milan
Naples Porto Seville Krakow Budapest Istanbul Dubai Doha Hanoi Osaka Kyoto
""".split()

VOWELS = "aeiou"

# Short system messages used for ~1/4 of the chat-format examples.
SYSTEM_MESSAGES = (
    "You are a helpful assistant.",
    "You are a precise assistant. Reply with the answer only.",
    "Answer concisely.",
    "You are a careful assistant that gives short, exact answers.",
)


def q(s):
    """Quote a word the canonical way used in instructions."""
    return '"' + s + '"'


def phrase(rng, lo, hi):
    """A lowercase phrase of lo..hi distinct words."""
    n = rng.randint(lo, hi)
    out = []
    while len(out) < n:
        w = rng.choice(WORDS)
        if w not in out:
            out.append(w)
    return out


def sentence(rng, lo, hi):
    """A simple sentence (capitalised, ends with '.') of lo..hi words."""
    ws = phrase(rng, lo, hi)
    ws = ["the"] + ws if rng.random() < 0.5 else ws
    s = " ".join(ws)
    return s[0].upper() + s[1:] + "."


# ---------------------------------------------------------------------------
# Task generators. Each returns (content_key, instruction, input, output).
# content_key identifies the underlying problem independently of phrasing;
# the committed splits never repeat a content key, so the test split never
# contains a re-phrasing of a training problem.
# ---------------------------------------------------------------------------

def gen_arithmetic(rng):
    op = rng.choice(("add", "sub", "mul"))
    if op == "add":
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        ans = a + b
        forms = (
            ("What is {a} + {b}?", None),
            ("Compute {a} plus {b}.", None),
            ("Add {a} and {b}.", None),
            ("Calculate the sum of {a} and {b}.", None),
            ("Solve the following arithmetic problem. Answer with just the number.", "{a} + {b}"),
            ("What is the result of this addition?", "{a} + {b}"),
        )
    elif op == "sub":
        a = rng.randint(1, 99)
        b = rng.randint(0, a)
        ans = a - b
        forms = (
            ("What is {a} - {b}?", None),
            ("Compute {a} minus {b}.", None),
            ("Subtract {b} from {a}.", None),
            ("What is the difference between {a} and {b}?", None),
            ("Solve the following arithmetic problem. Answer with just the number.", "{a} - {b}"),
            ("What is the result of this subtraction?", "{a} - {b}"),
        )
    else:
        a, b = rng.randint(2, 15), rng.randint(2, 25)
        ans = a * b
        forms = (
            ("What is {a} * {b}?", None),
            ("What is {a} times {b}?", None),
            ("Multiply {a} by {b}.", None),
            ("What is the product of {a} and {b}?", None),
            ("Solve the following arithmetic problem. Answer with just the number.", "{a} * {b}"),
            ("What is the result of this multiplication?", "{a} * {b}"),
        )
    ins, inp = rng.choice(forms)
    ins = ins.format(a=a, b=b)
    inp = inp.format(a=a, b=b) if inp else ""
    return (op, a, b), ins, inp, str(ans)


def gen_counting(rng):
    kind = rng.choice(("letters", "words", "char"))
    if kind == "letters":
        w = rng.choice(WORDS)
        forms = (
            ("How many letters are in the word {w}?", None),
            ("Count the letters in the word {w}.", None),
            ("What is the length of the word {w}, in letters?", None),
            ("Count the letters in the following word.", "{w}"),
            ("How many letters does this word have?", "{w}"),
        )
        ins, inp = rng.choice(forms)
        ins = ins.format(w=q(w))
        inp = inp.format(w=w) if inp else ""
        return (kind, w), ins, inp, str(len(w))
    if kind == "words":
        s = sentence(rng, 3, 10)
        forms = (
            ("How many words are in the following sentence?", "{s}"),
            ("Count the words in this sentence.", "{s}"),
            ("Count the number of words in the sentence: {s}", None),
            ("How many words does this sentence contain? {s}", None),
        )
        ins, inp = rng.choice(forms)
        ins = ins.format(s=s)
        inp = inp.format(s=s) if inp else ""
        return (kind, s), ins, inp, str(len(s.split()))
    # occurrences of a letter in a word (sometimes zero)
    w = rng.choice(WORDS)
    if rng.random() < 0.8:
        c = rng.choice(w)
    else:
        c = rng.choice([x for x in "abcdefghijklmnopqrstuvwxyz" if x not in w])
    forms = (
        ("How many times does the letter {c} appear in {w}?", None),
        ("Count the occurrences of the letter {c} in the word {w}.", None),
        ("How often is the letter {c} used in the word {w}?", None),
        ("Count how many times the letter {c} occurs in the following word.", "{wi}"),
    )
    ins, inp = rng.choice(forms)
    ins = ins.format(c=q(c), w=q(w))
    inp = inp.format(wi=w) if inp else ""
    return (kind, w, c), ins, inp, str(w.count(c))


def gen_string(rng):
    kind = rng.choice(("reverse", "upper", "lower", "initials", "novowels"))
    if kind == "reverse":
        w = rng.choice(WORDS)
        forms = (
            ("Reverse the following word.", "{w}"),
            ("Write this word backwards.", "{w}"),
            ("Reverse the word {qw}.", None),
            ("What is {qw} spelled backwards?", None),
        )
        ans = w[::-1]
        text = w
    elif kind == "upper":
        text = " ".join(phrase(rng, 1, 3))
        forms = (
            ("Convert the following text to uppercase.", "{w}"),
            ("Rewrite this in all capital letters.", "{w}"),
            ("Convert {qw} to uppercase.", None),
            ("Write {qw} in capital letters.", None),
        )
        ans = text.upper()
    elif kind == "lower":
        ws = phrase(rng, 1, 3)
        if rng.random() < 0.5:
            text = " ".join(ws).upper()
        else:
            text = " ".join(x[0].upper() + x[1:] for x in ws)
        forms = (
            ("Convert the following text to lowercase.", "{w}"),
            ("Rewrite this in all lowercase letters.", "{w}"),
            ("Convert {qw} to lowercase.", None),
            ("Write {qw} in lowercase.", None),
        )
        ans = text.lower()
    elif kind == "initials":
        text = " ".join(phrase(rng, 3, 6))
        forms = (
            ("Write the first letter of each word in the following text, with no spaces.", "{w}"),
            ("Concatenate the first letter of every word.", "{w}"),
            ("Give the first letter of each word in {qw}, joined together.", None),
            ("Take the first letter of each word of {qw} and join them.", None),
        )
        ans = "".join(x[0] for x in text.split())
    else:
        # at least one consonant so the answer is never empty
        text = " ".join(phrase(rng, 1, 3))
        forms = (
            ("Remove all vowels from the following text.", "{w}"),
            ("Delete every vowel (a, e, i, o, u) from this text.", "{w}"),
            ("Remove the vowels from {qw}.", None),
            ("Write {qw} without its vowels.", None),
        )
        ans = "".join(ch for ch in text if ch not in VOWELS)
    ins, inp = rng.choice(forms)
    ins = ins.format(qw=q(text))
    inp = inp.format(w=text) if inp else ""
    return (kind, text), ins, inp, ans


def gen_sorting(rng):
    kind = rng.choice(("asc", "desc", "words"))
    if kind in ("asc", "desc"):
        n = rng.randint(4, 8)
        nums = []
        while len(nums) < n:
            x = rng.randint(0, 99)
            if x not in nums:
                nums.append(x)
        items = [str(x) for x in nums]
        srt = sorted(nums, reverse=(kind == "desc"))
        ans = ", ".join(str(x) for x in srt)
        if kind == "asc":
            forms = (
                ("Sort the following numbers in ascending order.", True),
                ("Arrange these numbers from smallest to largest.", True),
                ("Sort these numbers from lowest to highest: {l}", False),
                ("Put the numbers {l} in increasing order.", False),
            )
        else:
            forms = (
                ("Sort the following numbers in descending order.", True),
                ("Arrange these numbers from largest to smallest.", True),
                ("Sort these numbers from highest to lowest: {l}", False),
                ("Put the numbers {l} in decreasing order.", False),
            )
    else:
        items = phrase(rng, 4, 7)
        ans = ", ".join(sorted(items))
        forms = (
            ("Sort the following words alphabetically.", True),
            ("Put these words in alphabetical order.", True),
            ("Sort these words in alphabetical order: {l}", False),
            ("Arrange the words {l} alphabetically.", False),
        )
    listed = ", ".join(items)
    ins, use_input = rng.choice(forms)
    if use_input:
        inp = listed
    else:
        ins = ins.format(l=listed)
        inp = ""
    return (kind, tuple(items)), ins, inp, ans


UNITS = (
    # (key, from singular, from plural, to plural, abbreviation, factor)
    ("km_m", "kilometer", "kilometers", "meters", "km", 1000),
    ("kg_g", "kilogram", "kilograms", "grams", "kg", 1000),
    ("h_min", "hour", "hours", "minutes", "h", 60),
    ("m_cm", "meter", "meters", "centimeters", "m", 100),
    ("min_s", "minute", "minutes", "seconds", "min", 60),
    ("l_ml", "liter", "liters", "milliliters", "L", 1000),
)


def fmt_qty(x4):
    """x4 is the quantity times 4 (quarters); render 7, 2.5, 1.25, 0.75."""
    whole, frac = divmod(x4, 4)
    if frac == 0:
        return str(whole)
    return str(whole) + (".25", ".5", ".75")[frac - 1]


def gen_units(rng):
    key, sing, plur, to, abbr, factor = rng.choice(UNITS)
    r = rng.random()
    if r < 0.7:
        x4 = 4 * rng.randint(1, 250)  # whole number 1..250
    elif r < 0.9:
        x4 = 4 * rng.randint(0, 99) + 2  # 0.5 .. 99.5
    else:
        x4 = 4 * rng.randint(0, 49) + rng.choice((1, 3))  # x.25 / x.75
    # every factor is a multiple of 4, so the converted value is an integer
    assert (x4 * factor) % 4 == 0
    qty = fmt_qty(x4)
    unit = sing if x4 == 4 else plur
    ans = str(x4 * factor // 4)
    forms = (
        ("Convert {q} {u} to {t}.", None),
        ("How many {t} are in {q} {u}?", None),
        ("Convert {q} {a} to {t}. Answer with just the number.", None),
        ("Convert the following quantity to {t}.", "{q} {a}"),
        ("Express this amount in {t}.", "{q} {u}"),
    )
    ins, inp = rng.choice(forms)
    ins = ins.format(q=qty, u=unit, t=to, a=abbr)
    inp = inp.format(q=qty, u=unit, a=abbr) if inp else ""
    return (key, x4), ins, inp, ans


def json_obj(pairs):
    """Canonical JSON: keys in the given order, ', ' and ': ' separators."""
    return json.dumps(dict(pairs), ensure_ascii=False)


def gen_json(rng):
    kind = rng.choice(("name_age", "name_city", "name_age_city"))
    name = rng.choice(NAMES)
    age = rng.randint(18, 90)
    city = rng.choice(CITIES)
    if kind == "name_age":
        text = rng.choice((
            "{n} is {a} years old.",
            "{n}, aged {a}, just joined the team.",
            "Meet {n}, who is {a}.",
            "{n} turned {a} this year.",
        )).format(n=name, a=age)
        keys = "name and age"
        pairs = (("name", name), ("age", age))
        key = (kind, name, age)
    elif kind == "name_city":
        text = rng.choice((
            "{n} lives in {c}.",
            "{n} moved to {c} last spring.",
            "Our new colleague {n} is based in {c}.",
            "{n} was born and raised in {c}.",
        )).format(n=name, c=city)
        keys = "name and city"
        pairs = (("name", name), ("city", city))
        key = (kind, name, city)
    else:
        text = rng.choice((
            "{n} is {a} years old and lives in {c}.",
            "{n}, {a}, lives in {c}.",
            "Living in {c}, {n} is {a} years old.",
            "{n} from {c} is {a}.",
        )).format(n=name, a=age, c=city)
        keys = "name, age and city"
        pairs = (("name", name), ("age", age), ("city", city))
        key = (kind, name, age, city)
    forms = (
        ("Return a JSON object with keys {k} for: {t}", None),
        ("Extract the {k} from the following text as a JSON object.", True),
        ("Convert the following sentence into a JSON object with keys {k}.", True),
        ("Give a JSON object with the keys {k} describing this person: {t}", None),
    )
    ins, use_input = rng.choice(forms)
    if use_input:
        ins, inp = ins.format(k=keys), text
    else:
        ins, inp = ins.format(k=keys, t=text), ""
    return key, ins, inp, json_obj(pairs)


FAMILIES = (
    ("arithmetic", gen_arithmetic),
    ("counting", gen_counting),
    ("string_transform", gen_string),
    ("sorting", gen_sorting),
    ("unit_conversion", gen_units),
    ("json_format", gen_json),
)


# ---------------------------------------------------------------------------
# Long-form "explanation" examples (benchmark files only): outputs of one to
# ~20 template sentences, so tokenised lengths range from ~20 to ~400 tokens.
# ---------------------------------------------------------------------------
TOPICS = (
    "photosynthesis", "compound interest", "version control", "plate tectonics",
    "the water cycle", "supply and demand", "vaccination", "binary search",
    "climate change", "the immune system", "gradient descent", "recycling",
    "public libraries", "sleep hygiene", "electric cars", "the printing press",
    "unit testing", "renewable energy", "bird migration", "inflation",
    "open source software", "the scientific method", "urban gardening",
    "data compression", "volcanic eruptions", "team sports", "music theory",
)
AUDIENCES = (
    "a child", "a new employee", "a high school student", "a busy manager",
    "a curious beginner", "a retired teacher", "a software engineer",
)
SUBJECTS = (
    "This idea", "The process", "A simple example", "The main benefit",
    "One common mistake", "The key insight", "Every beginner", "A good teacher",
    "The history of it", "A careful observer", "The first step", "In practice, it",
)
VERBS = (
    "shows", "explains", "changes", "improves", "connects", "reveals",
    "depends on", "builds on", "affects", "supports", "simplifies", "measures",
)
OBJECTS = (
    "how small parts form a larger system", "the way people make decisions",
    "the cost of doing nothing", "patterns that repeat over time",
    "the balance between speed and accuracy", "what happens when conditions change",
    "the link between cause and effect", "ideas that seem unrelated at first",
    "the daily habits of ordinary people", "the limits of what we can predict",
)
ADVERBIALS = (
    "in a surprisingly clear way", "over many years", "when you look closely",
    "even in everyday life", "for almost everyone involved", "step by step",
    "without much extra effort", "in ways that are easy to miss",
    "more than most people expect", "at every level of detail",
)
EXPLAIN_FORMS = (
    ("Explain {t} to {a}.", None),
    ("Write a short explanation of {t} for {a}.", None),
    ("Describe why {t} matters.", None),
    ("Explain the following topic in plain language.", "{t}"),
    ("Summarize the key ideas of this topic for {a}.", "{t}"),
)


def gen_explanation(rng):
    topic = rng.choice(TOPICS)
    aud = rng.choice(AUDIENCES)
    ins, inp = rng.choice(EXPLAIN_FORMS)
    ins = ins.format(t=topic, a=aud)
    inp = inp.format(t=topic) if inp else ""
    n = rng.randint(1, 20)
    first = topic[0].upper() + topic[1:]
    sents = [first + " is easiest to understand through a few plain observations."]
    for _ in range(n - 1):
        sents.append(" ".join((rng.choice(SUBJECTS), rng.choice(VERBS),
                               rng.choice(OBJECTS), rng.choice(ADVERBIALS))) + ".")
    return ins, inp, " ".join(sents)


# ---------------------------------------------------------------------------
# Assembling and writing.
# ---------------------------------------------------------------------------

def alpaca_record(task, ins, inp, out):
    return {"instruction": ins, "input": inp, "output": out, "task": task}


def messages_record(rec, system):
    user = rec["instruction"] + ("\n\n" + rec["input"] if rec["input"] else "")
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    msgs.append({"role": "assistant", "content": rec["output"]})
    return {"messages": msgs, "task": rec["task"]}


def generate_splits(seed=TASKS_SEED, n_train=N_TRAIN, n_test=N_TEST):
    """Return (train, test) lists of alpaca records.

    Families are drawn round-robin. No content key and no (instruction, input)
    pair is ever repeated, so test is disjoint from train. The test split is
    drawn first, then train.
    """
    rng = random.Random(seed)
    seen_keys = set()
    seen_pairs = set()
    out = []
    total = n_test + n_train
    i = 0
    while len(out) < total:
        task, gen = FAMILIES[i % len(FAMILIES)]
        for _attempt in range(10000):
            key, ins, inp, ans = gen(rng)
            key = (task,) + key
            if key in seen_keys or (ins, inp) in seen_pairs:
                continue
            seen_keys.add(key)
            seen_pairs.add((ins, inp))
            out.append(alpaca_record(task, ins, inp, ans))
            break
        else:
            raise RuntimeError("task space exhausted for family %s" % task)
        i += 1
    return out[n_test:], out[:n_test]


def assign_systems(records, seed):
    rng = random.Random(seed)
    out = []
    for _ in records:
        if rng.random() < SYSTEM_FRACTION:
            out.append(rng.choice(SYSTEM_MESSAGES))
        else:
            out.append(None)
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False))
            f.write("\n")


def write_tasks(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    train, test = generate_splits()
    for name, recs, sys_seed in (("train", train, TASKS_SEED + 1), ("test", test, TASKS_SEED + 2)):
        write_jsonl(os.path.join(out_dir, name + ".alpaca.jsonl"), recs)
        systems = assign_systems(recs, sys_seed)
        write_jsonl(os.path.join(out_dir, name + ".messages.jsonl"),
                    [messages_record(r, s) for r, s in zip(recs, systems)])
    return len(train), len(test)


def write_bench(path, n, seed, long_fraction=0.5):
    """N alpaca records (no dedupe): short tasks mixed with long explanations."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        if rng.random() < long_fraction:
            ins, inp, out = gen_explanation(rng)
            recs.append(alpaca_record("explanation", ins, inp, out))
        else:
            task, gen = FAMILIES[rng.randrange(len(FAMILIES))]
            _key, ins, inp, ans = gen(rng)
            recs.append(alpaca_record(task, ins, inp, ans))
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    write_jsonl(path, recs)
    return len(recs)


def check():
    with tempfile.TemporaryDirectory() as tmp:
        write_tasks(tmp)
        bad = []
        for name in TASK_FILES:
            committed = os.path.join(TASKS_DIR, name)
            fresh = os.path.join(tmp, name)
            if not os.path.exists(committed) or not filecmp.cmp(committed, fresh, shallow=False):
                bad.append(name)
    if bad:
        print("datasets/tasks out of date: %s\nrun: python3 datasets/generate.py"
              % ", ".join(bad), file=sys.stderr)
        return 1
    print("datasets/tasks: %d files up to date" % len(TASK_FILES))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and verify the committed files are identical")
    ap.add_argument("--alpaca-out", metavar="PATH",
                    help="write one benchmark alpaca JSONL (short tasks + long explanations)")
    ap.add_argument("--n", type=int, default=50000, help="examples for --alpaca-out")
    ap.add_argument("--seed", type=int, default=7, help="seed for --alpaca-out")
    ap.add_argument("--long-fraction", type=float, default=0.5,
                    help="fraction of long explanation examples for --alpaca-out")
    ap.add_argument("--out-dir", default=TASKS_DIR,
                    help="directory for the train/test files (default: datasets/tasks)")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if args.alpaca_out:
        n = write_bench(args.alpaca_out, args.n, args.seed, args.long_fraction)
        print("wrote %d examples to %s" % (n, args.alpaca_out))
        return 0
    n_train, n_test = write_tasks(args.out_dir)
    print("wrote %d train / %d test examples to %s" % (n_train, n_test, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
