"""The cleaning rules, as a before/after table: tokenised spacing joined, traps left intact."""

from __future__ import annotations

import pytest

from data.cleaning import clean_text

CASES = [
    # tokenised punctuation
    ("Say , Jim , how about going for a few beers after dinner ?",
     "Say, Jim, how about going for a few beers after dinner?"),
    ("Well ... I guess so !", "Well... I guess so!"),
    ("Communist Party of China ( CPC ) ?", "Communist Party of China (CPC)?"),
    ('They \' re singing " Happy Birthday " .', 'They\'re singing "Happy Birthday".'),
    ("named ' New College ' , without", "named 'New College', without"),
    # contractions and possessives
    ("I do n't know . We ca n't go .", "I don't know. We can't go."),
    ("You can ' t do that .", "You can't do that."),
    ("Good.Let ' s go now .", "Good. Let's go now."),
    ("I ’ Ve been there . It ’ s late .", "I've been there. It's late."),
    ("It 's five o ' clock , ma ’ am .", "It's five o'clock, ma'am."),
    ("the students ' books", "the students' books"),
    # glued sentences, but not abbreviations
    ("I guess you are right.But what shall we do ?", "I guess you are right. But what shall we do?"),
    ("I flew to the U.S. last year .", "I flew to the U.S. last year."),
    ("We landed in L.A. at 5 p.m. sharp .", "We landed in L.A. at 5 p.m. sharp."),
    ("Mr. Smith is here .", "Mr. Smith is here."),
    # decimals, money, times
    ("My GPA is 3.92 , and it costs 3.5 dollars .", "My GPA is 3.92, and it costs 3.5 dollars."),
    ("I got $ 500 a week , or £ 330 .", "I got $500 a week, or £330."),
    ("See you at 8: 00 , or at 10:30 .", "See you at 8:00, or at 10:30."),
    # URLs and e-mail addresses
    ("Go to www.google.com , and type it in .", "Go to www.google.com, and type it in."),
    ("visit www.StudioClassroom.com.tw for the recipe .",
     "visit www.StudioClassroom.com.tw for the recipe."),
    ("See https://example.org/a.B?x=1.5 now .", "See https://example.org/a.B?x=1.5 now."),
    ("My email address is bluedog123@yahoo.com .", "My email address is bluedog123@yahoo.com."),
    ("Write to Jane.Doe@Example.com today", "Write to Jane.Doe@Example.com today"),
    # encoding damage, CJK full stop, spacing
    ("The cafÃ© is open", "The café is open"),
    ("He is an acrobat 。", "He is an acrobat."),
    ("  two   spaces\tand a tab  ", "two spaces and a tab"),
    # untokenised text is left as it is, emoticons included
    ("Hi! How's it going? :) I'm fine :D", "Hi! How's it going? :) I'm fine :D"),
    ("first line\nsecond line", "first line\nsecond line"),
]  # fmt: skip


@pytest.mark.parametrize(("before", "after"), CASES)
def test_clean_text(before: str, after: str) -> None:
    assert clean_text(before) == after


@pytest.mark.parametrize(("_before", "after"), CASES)
def test_cleaning_is_idempotent(_before: str, after: str) -> None:
    assert clean_text(after) == after
