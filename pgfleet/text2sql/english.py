"""The English of database names: a name's words, and its plural, singular and article.

Shared by the templates that phrase synthetic questions
(:mod:`~pgfleet.text2sql.synth_templates`) and by the reading of a question's tables
(:mod:`~pgfleet.text2sql.inputs`), so that both say a table's name the same way. Pure.
"""

from __future__ import annotations


def words(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("x", "ch", "sh")) else "s")


def singular(noun: str) -> str:
    if noun.endswith("ies"):
        return noun[:-3] + "y"
    if noun.endswith(("xes", "ches", "shes")):
        return noun[:-2]
    if noun.endswith("s") and not noun.endswith(("ss", "us", "is")):
        return noun[:-1]
    return noun


def article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"
