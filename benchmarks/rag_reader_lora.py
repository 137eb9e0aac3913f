"""Does a LoRA fine-tuning make SmolLM2-135M a better reader for notebook 10? Trained on made-up examples, measured
on notebook 10's development questions.

    python benchmarks/rag_reader_lora.py [--steps 120] [--batch 4] [--answers restate|quote] [--first-layer 20]

The training examples are generated here from templates about a made-up world (models, data sets, bridges,
observatories with invented names and numbers): never text of either paper, and none of the papers' values
(no 6 layers of 2048 units, no 15 percent, no GELU...), so that nothing of the evaluation leaks into the training.
Each example is notebook 10's prompt (helpers.rag.build_messages: the system prompt, 3-5 one-sentence excerpts
with pages, the question) and its reply: one sentence that restates the asked fact with the excerpt's words and
numbers (``--answers restate``) or the excerpt's sentence itself (``quote``); 5% of the examples lack the fact and
answer "not in the document". The loss is on the reply only.

LoRA adapters (r 8, alpha 16) on every linear layer of blocks ``--first-layer``..29 train for ``--steps`` steps of
``--batch`` examples (helpers.fit: AdamW, learning rate 5e-4, 10 warm-up steps, then cosine), then the base and the adapted model (adapters
merged) answer the development questions with notebook 10's recipe (helpers.recipes.CHAT_WITH_PDF: chunks of 80
words, hybrid top 3, the 3 closest sentences); the last line compares them. The held-out questions are not used.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
import torch.nn.functional as F

from helpers import fit, rag
from helpers.lora import LoRAAdapters
from helpers.pretrained import chatml
from helpers.rag.answers import build_messages
from helpers.rag.local import LocalModel, local_model
from helpers.rag.retrieval import Hit
from helpers.recipes import CHAT_WITH_PDF

NAMES = ["Orion", "Kestrel", "Marlin", "Halcyon", "Quill", "Tessera", "Vireo", "Zephyr", "Lumen", "Corvid",
         "Basalt", "Sirocco", "Argent", "Pallas", "Nimbus", "Ember", "Talon", "Juniper", "Solace", "Varda"]
KINDS = ["model", "network", "encoder", "parser", "tagger", "system", "translator", "classifier"]
PEOPLE = ["Maria Lindqvist", "Tomas Okafor", "Priya Raman", "Jonas Weber", "Elena Rossi", "Kenji Sato",
          "Amara Diallo", "Lucas Moreau", "Sofia Novak", "Daniel Cohen"]
DATASETS = ["NewsCrawl-19", "the Harbor corpus", "WikiBio", "the Lantern treebank", "OpenDialog",
            "the Fjord benchmark", "SciQA", "the Atlas collection"]
METRICS = ["BLEU", "F1", "accuracy", "ROUGE-L", "exact match"]
GPUS = ["V100", "A100", "K80", "T4", "H100", "L4"]
OPTIMIZERS = ["Adam", "AdamW", "Adafactor", "SGD with momentum", "RMSProp", "LAMB"]
ACTIVATIONS = ["ReLU", "SiLU", "tanh", "Swish", "Mish", "ELU"]
TASKS = ["span corruption", "denoising", "contrastive matching", "sentence ordering", "token replacement detection",
         "caption matching", "gap filling"]
CORPORA = ["BookShelf", "WikiText", "CommonPages", "NewsArchive", "ForumDump", "PatentText"]
TOPICS = ["sentiment analysis", "speech recognition", "question answering", "summarization", "image captioning"]
CITIES = ["Aldmere", "Brackwater", "Corvena", "Dunmoor", "Estrid", "Falkhaven"]
FIELDS = ["chemistry", "astronomy", "geology", "linguistics", "medicine"]


def made_up_facts(r: random.Random) -> list[tuple[str, str, str]]:
    """(sentence, question, answer) triples about one made-up model and its world."""
    name, kind = r.choice(NAMES), r.choice(KINDS)
    E = f"the {name} {kind}"
    Ec = E[0].upper() + E[1:]
    layers, heads = r.randint(2, 48), r.choice([2, 4, 12, 16, 24, 32])
    days, n_gpus, gpu = r.choice([1, 2, 2.5, 3, 5, 6, 7, 9, 12, 14]), r.choice([1, 2, 4, 16, 32, 64]), r.choice(GPUS)
    lr = r.choice(["1e-4", "3e-4", "2e-5", "0.001", "0.01", "6e-4", "8e-5"])
    batch = r.choice([16, 24, 32, 48, 64, 96, 128, 384, 512, 1024])
    dropout = r.choice(["0.2", "0.3", "0.05", "0.15", "0.25", "0.4"])
    data, metric = r.choice(DATASETS), r.choice(METRICS)
    score, gain = f"{r.uniform(20, 95):.1f}", f"{r.uniform(0.2, 6):.1f}"
    pairs = r.choice([1.2, 2.5, 3.6, 7, 12, 18, 27])
    vocab = r.choice([8000, 16000, 24000, 32000, 50000, 65536])
    person, person2 = r.sample(PEOPLE, 2)
    acronym = "".join(c for c in name.upper()[:3]) + r.choice(["", "-X", "2"])
    words = r.sample(["Adaptive", "Bidirectional", "Contextual", "Deep", "Efficient", "Layered", "Multiscale",
                      "Recurrent", "Sparse", "Temporal"], 2)
    expansion = (f"{words[0]} {words[1]} {r.choice(['Encoder', 'Network', 'Retriever'])} for "
                 f"{r.choice(['Text', 'Language', 'Speech', 'Documents'])}")
    opt, beta1, beta2 = r.choice(OPTIMIZERS), r.choice(["0.8", "0.85", "0.95"]), r.choice(["0.99", "0.995", "0.999"])
    act, act2 = r.sample(ACTIVATIONS, 2)
    warmup = r.choice([1000, 2000, 3000, 8000, 10000])
    share = r.choice([10, 12, 20, 25, 30, 35, 40, 60])
    task1, task2 = r.sample(TASKS, 2)
    corpus1, corpus2 = r.sample(CORPORA, 2)
    url = f"https://github.com/{r.choice(['labs', 'opennlp', 'research'])}/{name.lower()}-{r.choice(['code', 'toolkit'])}"
    topic, city, year, span = r.choice(TOPICS), r.choice(CITIES), r.randint(1890, 2022), r.randint(80, 2400)
    data_cap = data[0].upper() + data[1:]
    return [
        (f"{Ec} is a stack of {layers} identical layers, each with two sub-layers.",
         f"How many layers does {E} have?", f"{Ec} has {layers} identical layers."),
        (f"In each layer, {E} runs {heads} attention heads in parallel.",
         f"How many attention heads does {E} use?", f"{Ec} uses {heads} parallel attention heads."),
        (f"We trained {E} for {days} days on {n_gpus} {gpu} GPUs.",
         f"How long did training {E} take?", f"Training {E} took {days} days."),
        (f"All experiments with {E} ran on a single machine with {n_gpus} {gpu} GPUs.",
         f"On what hardware was {E} trained?", f"{Ec} was trained on {n_gpus} {gpu} GPUs."),
        (f"For fine-tuning, we use a learning rate of {lr} and a batch size of {batch}.",
         "What learning rate was used for fine-tuning?", f"The learning rate for fine-tuning was {lr}."),
        (f"Each training batch contains {batch} sequences of up to 512 tokens.",
         "What batch size was used?", f"The batch size was {batch} sequences."),
        (f"We apply dropout with a rate of {dropout} to the output of every sub-layer.",
         "What dropout rate was used?", f"The dropout rate was {dropout}."),
        (f"On {data}, {E} reaches {score} {metric}, {gain} points above the previous best result.",
         f"What {metric} does {E} reach on {data}?", f"{Ec} reaches {score} {metric} on {data}."),
        (f"{data_cap} consists of about {pairs} million sentence pairs.",
         f"How many sentence pairs does {data} have?", f"{data_cap} has about {pairs} million sentence pairs."),
        (f"The tokenizer of {E} has a vocabulary of {vocab:,} subword units.",
         f"How large is the vocabulary of {E}?", f"The vocabulary has {vocab:,} subword units."),
        (f"{acronym}, which stands for {expansion}, is the name we give to {E}.",
         f"What does {acronym} stand for?", f"{acronym} stands for {expansion}."),
        (f"The {topic} variant of {E} was proposed by {person}, and {person2} designed its evaluation.",
         f"Who proposed the {topic} variant of {E}?", f"{person} proposed the {topic} variant of {E}."),
        (f"We optimise with {opt}, using β1 = {beta1} and β2 = {beta2}.",
         "Which optimizer was used, and with which beta values?",
         f"The optimizer was {opt} with β1 = {beta1} and β2 = {beta2}."),
        (f"The learning rate rises linearly for the first {warmup:,} steps and then decays.",
         "How many warmup steps are used?", f"The learning rate warms up for {warmup:,} steps."),
        (f"{Ec} uses the {act} activation instead of {act2} in its feed-forward layers.",
         f"Which activation function does {E} use?", f"{Ec} uses the {act} activation."),
        (f"During pre-training, {share}% of the input tokens are selected at random for prediction.",
         "What share of the input tokens is selected for prediction?",
         f"{share}% of the input tokens are selected for prediction."),
        (f"{Ec} is pre-trained on two tasks: {task1} and {task2}.",
         f"What are the pre-training tasks of {E}?", f"The pre-training tasks are {task1} and {task2}."),
        (f"For pre-training we use the {corpus1} corpus and the {corpus2} corpus.",
         "Which corpora are used for pre-training?", f"Pre-training uses the {corpus1} and {corpus2} corpora."),
        (f"The code and trained weights of {E} are available at {url}.",
         f"Where is the code of {E} available?", f"The code is available at {url}."),
        (f"We chose {act} over {act2} because it trained faster and gave a lower validation loss.",
         f"Why was {act} chosen over {act2}?", f"{act} was chosen because it trained faster and gave a lower validation loss."),
        (f"The bridge at {city} opened in {year} and its main span is {span} metres long.",
         f"When did the bridge at {city} open?", f"The bridge at {city} opened in {year}."),
        (f"The {city} observatory, founded in {year}, studies {r.choice(FIELDS)} with a {r.randint(1, 10)}-metre telescope.",
         f"When was the {city} observatory founded?", f"The {city} observatory was founded in {year}."),
    ]


def made_up_example(r: random.Random, answers: str = "restate", n_excerpts=(3, 5), p_missing: float = 0.05):
    """(excerpts, question, reply): one fact asked, its sentence among others (the same relation about another
    made-up model first among them), each sentence an excerpt with a random page."""
    world, other = made_up_facts(r), made_up_facts(r)
    order = list(range(len(world)))
    r.shuffle(order)
    target = world[order[0]]
    distractors = [other[order[0]][0]] + [world[i][0] for i in order[1:]]
    n = r.randint(*n_excerpts)
    sentences = [target[0], *distractors[: n - 1]]
    reply = target[0] if answers == "quote" else target[2]
    if r.random() < p_missing:  # the fact is not there
        sentences = [*distractors[:n]]
        reply = f"{rag.NOT_FOUND}."
    r.shuffle(sentences)
    return [Hit(r.randint(1, 15), s, 0.0, -1) for s in sentences], target[1], reply


def train(lm: LocalModel, args) -> LoRAAdapters:
    """LoRA on the blocks from ``args.first_layer`` up, with helpers.fit; the loss on the reply tokens only."""
    torch.manual_seed(args.seed)
    model, tokenizer = lm.model, lm.tokenizer
    adapters = LoRAAdapters.for_model(model, layers=range(args.first_layer, len(model.blocks)), r=8, alpha=16)
    adapters.attach(model)
    r, end = random.Random(args.seed), tokenizer.encode("<|im_end|>")

    def batch(step):  # (B, T) token ids, right-padded, and their targets: -100 but on the reply
        rows = []
        for _ in range(args.batch):
            excerpts, question, reply = made_up_example(r, args.answers)
            rows.append((tokenizer.encode(chatml(build_messages(question, excerpts))), tokenizer.encode(reply) + end))
        T = max(len(p) + len(a) for p, a in rows)
        x, y = torch.zeros(len(rows), T, dtype=torch.long), torch.full((len(rows), T), -100)
        for i, (prompt, reply_ids) in enumerate(rows):
            x[i, : len(prompt) + len(reply_ids)] = torch.tensor(prompt + reply_ids)
            y[i, len(prompt) - 1 : len(prompt) + len(reply_ids) - 1] = torch.tensor(reply_ids)
        return x, y

    def reply_loss(model, xy):
        x, y = xy
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)

    start = time.perf_counter()
    fit(model, batch, steps=args.steps, lr=args.lr, loss_fn=reply_loss, weight_decay=0.0, warmup=10)
    model.eval()
    print(f"trained {adapters.num_parameters():,} parameters for {args.steps} steps of {args.batch} examples in "
          f"{time.perf_counter() - start:.0f} s")
    return adapters


def evaluate(indexes, generator, questions, recipe) -> dict:
    rows = rag.evaluate_answers(indexes, questions, mode="local", generator=generator, k=recipe["k"],
                                n_sentences=recipe["n_sentences"])
    scores = rag.answer_scores(rows)
    scores["fallback"] = sum(r["answer"].mode == "extractive" for r in rows)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--first-layer", type=int, default=20)
    parser.add_argument("--answers", choices=["restate", "quote"], default="restate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recipe = CHAT_WITH_PDF["cpu"]
    indexes = {p: rag.DocumentIndex.from_pdf(rag.paper_path(p), max_words=recipe["max_words"],
                                             overlap_words=recipe["overlap_words"]) for p in ("attention", "bert")}
    dev = [q for q in rag.QUESTIONS if q.split == "dev"]
    base = local_model()
    tuned = LocalModel(copy.deepcopy(base.model), base.tokenizer)
    print("an example:", made_up_example(random.Random(args.seed), args.answers))
    adapters = train(tuned, args)
    adapters.merge(tuned.model)  # plain linear layers again: decoding at full speed
    line = []
    for label, generator in (("base", base), ("LoRA", tuned)):
        s = evaluate(indexes, generator, dev, recipe)
        print(f"{label}: ok {s['ok']:.2f}, states the fact {s['fact']:.2f}, right page {s['page']:.2f}, median "
              f"{s['median_words']} words, {s['fallback']} of {s['n']} replaced by the extractive answer")
        line.append(f"{label} {s['ok']:.2f}")
    print(f"rag_reader_lora ({args.answers}, {args.steps} x {args.batch} examples, blocks {args.first_layer}-29): "
          f"development questions answered well: {', '.join(line)}")


if __name__ == "__main__":
    main()
