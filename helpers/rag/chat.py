"""A conversation about one document: :class:`Chat` keeps the history, and a follow-up that leans on it
("and the big models?") is rewritten into a question that stands alone, for retrieval and for the answer.

The rewrite is a rule, not a model (a 135M model rewrites worse than it answers):

* "and X?", "what about X?", "how about X?": X takes the place of the phrase of the previous question that
  ends in the same noun ("How long did training the base models take?" + "And the big models?" ->
  "How long did training the big models take?"), or else in a noun with the same ending ("encoder" for
  "the decoder"); with neither, X is put after the previous question;
* a question with a pronoun that points back ("What dropout did they use?"): the previous question's words
  are added to the search, and the question itself is answered;
* anything else starts a new topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .answers import Answer, answer
from .retrieval import DocumentIndex, _check_question

_FOLLOW_UP = re.compile(r"^\s*(?:and what about|what about|how about|and for|what of|and)\s+(.+?)\s*\??\s*$", re.I)
_POINTERS = {"it", "its", "they", "them", "their", "this", "that", "these", "those", "there", "he", "she"}
_OPENERS = {"the", "a", "an", "its", "their", "this", "that", "these", "those", "our"}
_STOP = {"do", "does", "did", "is", "are", "was", "were", "has", "have", "had", "of", "in", "for", "on", "with",
         "to", "by", "how", "what", "which", "who", "many", "much", "long", "training", "train", "use", "used"}


def _stem(word: str) -> str:
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def rewrite(question: str, previous: str | None) -> tuple[str, str]:
    """(the question to answer, the query to search with) for ``question`` after ``previous`` (None: the first
    question). See the module's docstring for the rules."""
    question = _check_question(question)
    if not previous:
        return question, question
    follow = _FOLLOW_UP.match(question)
    if follow:
        phrase = follow.group(1).strip()
        head = _stem(re.findall(r"[\w-]+", phrase)[-1])
        words = list(re.finditer(r"[\w-]+", previous))
        same = [i for i, w in enumerate(words) if _stem(w.group()) == head]
        # else a word of the same kind, by its ending: "encoder" for "decoder", "English-French" for "English-German"
        alike = [i for i, w in enumerate(words) if len(head) > 5 and _stem(w.group())[-5:] == head[-5:]]
        for i in (same or alike)[:1]:
            w = words[i]
            # the phrase that ends at the matching noun: back over its modifiers, to an opener (the, its...)
            start = w.start()
            for j in range(i - 1, max(i - 4, -1), -1):
                word = words[j].group().lower()
                if word in _STOP:
                    break
                start = words[j].start()
                if word in _OPENERS:
                    break
            standalone = previous[:start] + phrase + previous[w.end():]
            return standalone, standalone
        standalone = f"{previous.rstrip('?')}, for {phrase}?"
        return standalone, standalone
    if {w.lower() for w in re.findall(r"[\w']+", question)} & _POINTERS:
        return question, f"{previous} {question}"
    return question, question


@dataclass
class Turn:
    asked: str  # what the user typed
    question: str  # the question answered (rewritten when it was a follow-up)
    query: str  # what the search was given
    answer: Answer


class Chat:
    """A conversation about ``index``: ``chat.ask(question)`` answers (with :func:`answer` and the keyword
    arguments given here: mode, k, client...), and keeps every :class:`Turn` in ``chat.history``."""

    def __init__(self, index: DocumentIndex, **answer_kwargs):
        self.index, self.answer_kwargs = index, answer_kwargs
        self.history: list[Turn] = []

    def ask(self, question: str, stream: bool = False) -> Answer:
        previous = self.history[-1].question if self.history else None
        standalone, query = rewrite(question, previous)
        if stream and standalone != question.strip():
            print(f"(asked as: {standalone})")
        result = answer(self.index, standalone, stream=stream, query=query, **self.answer_kwargs)
        self.history.append(Turn(question, standalone, query, result))
        return result

    def reset(self):
        self.history.clear()
