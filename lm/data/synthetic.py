"""The synthetic default corpus (`data.source: embedded`): a seeded generator of Civil-Comments-shaped
toxicity data.

Why a generator instead of a bundled file: `dvc repro` must work offline in minutes on a laptop, and the
metrics must still mean something. So the corpus imitates the structure of the Jigsaw Unintended Bias data
(Civil Comments) closely enough that every metric of the classify task exercises a real effect:

* **Text**: short reader comments (1-4 sentences) about news, politics, local issues, sports, products,
  the economy and the environment, built from slot-filled templates over several hundred content words,
  with occasional typos, ALL CAPS, emoji and doubled punctuation.
* **Target**: the fraction of k simulated annotators (k = 4..10, so values like 0.25 or 0.6) who judged the
  comment toxic. Each annotator votes toxic with probability sigmoid(z), where the latent toxicity z grows
  with insult / dismissal / obscenity-like / threat-like markers (mild and non-graphic), their intensity
  (intensifiers, caps, "!!"), and their context: insults aimed at a person count fully, at a thing about
  half, and negated ("nobody here is stupid") or quoted / reported ones ('he called the mayor "a fool"')
  barely. A per-comment Gaussian term is label noise. About 8-15 % of rows end up toxic (target >= 0.5).
* **Identity columns**: a comment mentions at most one identity ("as a muslim", "my gay neighbour",
  "black voters", ...) in a sentence of neutral content; that identity's column holds the fraction of
  identity annotators who saw the mention (near 1), the others 0. About a quarter of rows mention one, and
  about half of the rows are not identity-annotated at all (every identity column NaN), as in the real data.
* **Planted bias** (the point of the Jigsaw bias metrics): mentions of ``BIASED_IDENTITIES`` are several
  times more frequent in toxic comments than in non-toxic ones, and annotators over-rate comments that
  mention them (a shift of the latent toxicity). A model therefore learns "identity term => toxic", and the
  BPSN AUC (background positive, subgroup negative) of those identities is clearly lower than for the
  others.

Determinism: one `random.Random(seed)` stream consumed row by row, so the same seed gives the same frame
on every platform, and the first m rows of an n-row corpus equal the m-row corpus (prefix stability).
The identity columns asked for only select which annotations are returned; the texts do not depend on them.

Example::

    >>> df = generate_corpus(1000, seed=0, identities=["muslim", "female"])
    >>> list(df.columns)
    ['id', 'text', 'target', 'muslim', 'female']
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lm.errors import LmError

# ----------------------------------------------------------------------------------------------------------
# Lexicon. A template is a tuple of parts: a str is literal text, a `list[str]` is a slot filled uniformly,
# a `Marker` is a slot of toxicity markers whose weights add to the latent toxicity.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A slot of toxicity markers; `weights[i]` is how strongly `words[i]` pushes annotators to 'toxic'."""

    words: tuple[str, ...]
    weights: tuple[float, ...]


def _marker(pairs: list[tuple[str, float]]) -> Marker:
    return Marker(tuple(w for w, _ in pairs), tuple(s for _, s in pairs))


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeio" else "a ") + phrase


_INSULT_NOUNS = [
    ("idiot", 2.2),
    ("moron", 2.4),
    ("fool", 1.5),
    ("loser", 2.0),
    ("clown", 1.6),
    ("hypocrite", 1.3),
    ("troll", 1.4),
    ("imbecile", 2.4),
    ("jerk", 1.8),
    ("buffoon", 1.6),
    ("dimwit", 2.0),
    ("nitwit", 1.7),
    ("halfwit", 1.9),
    ("crybaby", 1.5),
    ("a**hole", 2.7),
    ("dumba**", 2.6),
]
_INTENSIFIERS = [
    ("", 1.0),
    ("complete ", 1.25),
    ("total ", 1.25),
    ("absolute ", 1.3),
    ("utter ", 1.3),
    ("pathetic little ", 1.45),
    ("stupid ", 1.4),
    ("ignorant ", 1.3),
]
_INSULT_ADJS = [
    ("stupid", 2.0),
    ("dumb", 1.8),
    ("pathetic", 1.8),
    ("ignorant", 1.3),
    ("clueless", 1.1),
    ("disgusting", 1.7),
    ("worthless", 2.0),
    ("brainless", 2.1),
    ("spineless", 1.4),
    ("idiotic", 2.0),
    ("moronic", 2.2),
    ("braindead", 2.1),
    ("gutless", 1.5),
    ("delusional", 1.3),
    ("sick in the head", 2.0),
]
_ADJ_BOOST = [("", 1.0), ("so ", 1.2), ("completely ", 1.25), ("truly ", 1.2), ("beyond ", 1.3)]
_DISMISSALS = [
    ("shut up", 2.0),
    ("get lost", 1.6),
    ("go away", 1.1),
    ("get a life", 1.3),
    ("grow up", 1.0),
    ("nobody cares what you think", 1.4),
    ("shut your mouth", 2.1),
    ("crawl back under your rock", 1.8),
]
_OBSCENE_NPS = [
    ("crap", 1.2),
    ("total crap", 1.5),
    ("bs", 1.1),
    ("complete garbage", 1.2),
    ("absolute trash", 1.2),
    ("a load of sh*t", 1.9),
    ("bull", 1.0),
    ("damn nonsense", 1.2),
]
_THREATS = [
    ("you'd better watch your back", 2.3),
    ("you will regret this", 1.9),
    ("someone should teach you a lesson", 2.1),
    ("I know where you live", 2.4),
    ("people like you should be run out of town", 2.2),
    ("keep talking and see what happens", 2.0),
]

NP_INSULT = _marker([(_article(i + n), w * m) for n, w in _INSULT_NOUNS for i, m in _INTENSIFIERS])
N_INSULT = _marker(_INSULT_NOUNS)
ADJ_INSULT = _marker([(b + a, w * m) for a, w in _INSULT_ADJS for b, m in _ADJ_BOOST])
ADJ_PLAIN = _marker(_INSULT_ADJS[:14])
DISMISS = _marker(_DISMISSALS)
OBSCENE = _marker(_OBSCENE_NPS)
THREAT = _marker(_THREATS)
WTF = _marker([("hell", 0.8), ("heck", 0.3), ("devil", 0.4), ("f**k", 1.8)])


@dataclass(frozen=True)
class Topic:
    subjects: list[str]  # who acts: "the mayor"
    things: list[str]  # what is discussed: "the new bike lane plan"


TOPICS = [
    Topic(  # politics
        [
            "the governor",
            "the senator",
            "the mayor",
            "the council",
            "the legislature",
            "the president",
            "congress",
            "the premier",
            "our representative",
            "the opposition",
            "the administration",
            "the prime minister",
            "the attorney general",
            "the party leadership",
        ],
        [
            "the new tax bill",
            "the budget",
            "the election",
            "the pension reform",
            "the minimum wage increase",
            "the referendum",
            "the campaign",
            "the trade deal",
            "the healthcare plan",
            "the sales tax",
            "the immigration policy",
            "the debate last night",
            "the recount",
            "the stimulus package",
        ],
    ),
    Topic(  # local issues
        [
            "the city",
            "the school board",
            "the police chief",
            "the neighbourhood association",
            "the transit authority",
            "the county",
            "the planning commission",
            "the fire department",
            "city hall",
            "the parks department",
        ],
        [
            "the new bike lane plan",
            "the parking policy",
            "the bus schedule",
            "the library schedule",
            "the road repair program",
            "the housing project",
            "the homeless shelter",
            "the park renovation",
            "the property tax",
            "the water rate hike",
            "the light rail extension",
            "the speed camera program",
            "the farmers market",
            "the snow removal",
            "the new roundabout",
        ],
    ),
    Topic(  # sports
        [
            "the coach",
            "the quarterback",
            "the referee",
            "the team",
            "the goalie",
            "the owner",
            "the league",
            "the manager",
            "the front office",
            "the pitcher",
            "the striker",
            "the commissioner",
        ],
        [
            "last night's game",
            "the trade",
            "the draft pick",
            "the new stadium",
            "the playoff run",
            "the ticket price hike",
            "the season opener",
            "the defense",
            "the penalty call",
            "the salary cap",
            "the transfer window",
            "the halftime show",
            "the injury report",
        ],
    ),
    Topic(  # products and companies
        [
            "this company",
            "the manufacturer",
            "the store",
            "customer service",
            "the airline",
            "the app developer",
            "the bank",
            "the phone company",
            "the landlord",
            "the dealership",
        ],
        [
            "this phone",
            "the new update",
            "the subscription price",
            "the warranty",
            "the delivery service",
            "the electric car",
            "the recall",
            "the battery life",
            "the loyalty program",
            "the baggage fee",
            "the overdraft fee",
            "the streaming service",
            "the self checkout",
        ],
    ),
    Topic(  # news and media
        [
            "the reporter",
            "the editor",
            "this paper",
            "the author",
            "the columnist",
            "the network",
            "the anchor",
            "the publisher",
            "the fact-checking desk",
        ],
        [
            "this article",
            "the headline",
            "the story",
            "the investigation",
            "the editorial",
            "the interview",
            "the coverage",
            "the poll",
            "the paywall",
            "the comment section",
            "the photo essay",
            "the op-ed",
        ],
    ),
    Topic(  # economy and environment
        [
            "the university",
            "the hospital",
            "the union",
            "the developer",
            "the oil industry",
            "the fishing lobby",
            "the tourism board",
            "the federal government",
            "the utility",
            "the mining company",
            "the ranching lobby",
        ],
        [
            "the pipeline",
            "the rail project",
            "the fishing quota",
            "the tuition hike",
            "the clinic closure",
            "the rent situation",
            "the wildfire response",
            "the ferry service",
            "the salmon run",
            "the carbon tax",
            "the mine expansion",
            "the drought plan",
            "the tourism forecast",
            "the new refinery",
        ],
    ),
]

POS_ADJ = [
    "a good idea",
    "long overdue",
    "a smart move",
    "reasonable",
    "worth a try",
    "a step in the right direction",
    "a fair compromise",
    "encouraging",
    "well thought out",
    "a real improvement",
    "promising",
    "sensible",
    "good news for everyone",
]
NEG_ADJ = [
    "short-sighted",
    "a mess",
    "badly planned",
    "a disappointment",
    "overpriced",
    "unfair to taxpayers",
    "a step backwards",
    "poorly explained",
    "too little too late",
    "a bad deal",
    "confusing",
    "wasteful",
]
NEG_NOUN = [
    "mess",
    "disappointment",
    "letdown",
    "circus",
    "fiasco",
    "waste of time",
    "headache",
    "missed chance",
]
ACTION = [
    "listen to residents",
    "release the numbers",
    "hold a public meeting",
    "explain the costs",
    "slow down",
    "ask the voters",
    "fix the basics first",
    "read the report",
    "put it to a vote",
    "be more transparent",
    "talk to the people affected",
    "show some leadership",
    "rethink the plan",
]
ACTION_PAST = [
    "listened to residents",
    "released the numbers",
    "admitted the mistake",
    "changed course",
    "delivered on a promise",
    "answered the questions",
    "made a decision",
]
EVENT = [
    "the next election",
    "the end of the year",
    "winter",
    "the next season",
    "the vote",
    "summer",
    "the budget is finalized",
    "anything else happens",
]
REPORT_GERUND = [
    "covering",
    "writing about",
    "explaining",
    "sharing",
    "posting",
    "digging into",
    "reporting on",
]
TIME_VERB = ["starts", "takes effect", "goes to a vote", "opens", "is scheduled", "gets reviewed", "ends"]
FAMILY = ["family", "wife and I", "husband and I", "parents", "neighbours", "kids", "roommate and I"]
HOW_LONG = ["two", "five", "ten", "twenty", "thirty", "forty", "a few", "several"]
CHANGE = ["gotten better", "gotten worse", "changed a lot", "barely changed", "gone downhill", "improved"]
RESOURCE = ["money", "time", "tax dollars", "everyone's time", "space", "paper", "resources"]
BAD_GERUND = [
    "mishandling",
    "ignoring",
    "rushing",
    "delaying",
    "hiding the costs of",
    "botching",
    "overselling",
    "underfunding",
]
HABIT = [
    "reading this paper",
    "watching the news",
    "shopping there",
    "going to games",
    "voting",
    "paying attention",
    "taking the bus",
    "flying with them",
]
BELIEVE = [
    "believe this",
    "fall for that",
    "vote for them",
    "defend this",
    "write something like that",
    "trust them",
    "buy that excuse",
]
PLAIN_CLAUSE = [
    "the plan needs work",
    "the numbers look off",
    "we deserve better",
    "this needs a second look",
    "the timing is bad",
    "nobody explained the costs",
    "the details matter",
]
GENERIC_POS = [
    "Well said.",
    "Great article.",
    "Interesting point.",
    "Agreed.",
    "Just my two cents.",
    "Thanks for sharing.",
    "Good read.",
    "Fair enough.",
    "Couldn't agree more.",
    "Good luck to them.",
    "Happy to see this.",
    "Nice work.",
    "Interesting times.",
    "Makes sense to me.",
]
GENERIC_NEG = [
    "Not impressed.",
    "Unbelievable.",
    "Typical.",
    "Here we go again.",
    "What a joke.",
    "Give me a break.",
    "So much for promises.",
    "Sigh.",
    "Really?",
    "Not again.",
]


@dataclass(frozen=True)
class Identity:
    """How a comment can mention one identity: first person, a group, or a single person."""

    self_: list[str]  # "as a muslim"
    group: list[str]  # "muslim families" (plural)
    person: list[str]  # "muslim coworker" (after "my")


IDENTITIES: dict[str, Identity] = {
    "male": Identity(
        ["as a man", "as a father", "as a guy"],
        ["men in this town", "fathers", "young men", "the guys at work"],
        ["husband", "dad", "brother", "son"],
    ),
    "female": Identity(
        ["as a woman", "as a mother", "as a mom"],
        ["women in this town", "mothers", "female athletes", "young women"],
        ["wife", "mom", "sister", "daughter"],
    ),
    "homosexual_gay_or_lesbian": Identity(
        ["as a gay man", "as a lesbian", "as a gay person"],
        ["gay couples", "the gay community", "lesbian parents", "gay students"],
        ["gay neighbour", "lesbian sister", "gay coworker", "gay son"],
    ),
    "christian": Identity(
        ["as a christian", "as a catholic", "as a churchgoer"],
        ["christian groups", "catholic parents", "churchgoers", "christian families"],
        ["christian aunt", "pastor", "catholic neighbour", "christian friend"],
    ),
    "jewish": Identity(
        ["as a jew", "as a jewish parent", "as a jewish woman"],
        ["jewish families", "the jewish community", "jewish students", "the synagogue members"],
        ["jewish landlord", "jewish friend", "rabbi", "jewish neighbour"],
    ),
    "muslim": Identity(
        ["as a muslim", "as a muslim parent", "as a muslim woman"],
        ["muslim families", "the muslim community", "muslim students", "the mosque members"],
        ["muslim coworker", "muslim neighbour", "muslim friend", "imam"],
    ),
    "black": Identity(
        ["as a black man", "as a black woman", "as a black parent"],
        ["black voters", "black business owners", "the black community", "black students"],
        ["black neighbour", "black coworker", "black friend", "black teammate"],
    ),
    "white": Identity(
        ["as a white guy", "as a white woman", "as a white parent"],
        ["white voters", "white suburban parents", "white business owners", "white students"],
        ["white neighbour", "white coworker", "white friend", "white teammate"],
    ),
    "psychiatric_or_mental_illness": Identity(
        ["as someone with depression", "as someone with anxiety", "as a person with bipolar disorder"],
        [
            "people with mental illness",
            "mental health patients",
            "people struggling with anxiety",
            "people with schizophrenia",
        ],
        [
            "brother, who has schizophrenia,",
            "sister, who has depression,",
            "friend with ptsd",
            "cousin with bipolar disorder",
        ],
    ),
}
SUPPORTED_IDENTITIES: tuple[str, ...] = tuple(IDENTITIES)

# Identities carrying the planted bias, and how: mention frequency in toxic comments is multiplied by
# TOXIC_MENTION_BOOST, and annotators add ANNOTATOR_BIAS to the latent toxicity of comments that mention them.
BIASED_IDENTITIES: tuple[str, ...] = ("homosexual_gay_or_lesbian", "muslim", "black")
TOXIC_MENTION_BOOST = 6.0
ANNOTATOR_BIAS = 2.5
# Mention shares among non-toxic comments (roughly the real data's ordering: gender terms most common).
_MENTION_WEIGHTS = {
    "male": 0.16,
    "female": 0.18,
    "homosexual_gay_or_lesbian": 0.08,
    "christian": 0.14,
    "jewish": 0.07,
    "muslim": 0.09,
    "black": 0.09,
    "white": 0.11,
    "psychiatric_or_mental_illness": 0.08,
}

# Comment-level rates and latent-toxicity scale.
P_TOXIC = 0.12  # comment written with an insult/dismissal/obscenity/threat aimed at someone
P_MILD = 0.08  # insult aimed at a thing (counts about half)
P_BENIGN_MARKER = 0.09  # marker words in a negated or quoted/reported context
P_CRITICAL = 0.28  # negative but civil
P_MENTION_TOXIC = 0.50
P_MENTION_OTHER = 0.20
P_ANNOTATED = 0.5  # rows with identity annotations; the rest are NaN in every identity column
BASE_Z = {"neutral": -4.5, "critical": -3.2, "marker": -4.0}
MARKER_SCALE = 2.5
NOISE_SD = 1.2
N_SENTENCES = (1, 2, 3, 4)
N_SENTENCES_W = (0.3, 0.35, 0.22, 0.13)
EMOJI_CALM = ["🙂", "👍", "😂", "🤔", "🙏", "😊", "👏"]
EMOJI_ANGRY = ["😡", "🙄", "🤡", "👎", "😤", "🤬"]


def _templates(t: Topic) -> dict[str, list[tuple[tuple, float]]]:
    """The sentence shapes for one topic, by kind, each with its context multiplier for markers."""
    s, th = t.subjects, t.things
    neutral = [
        ("I think ", th, " is ", POS_ADJ, "."),
        ("Honestly ", th, " seems ", POS_ADJ, " to me."),
        ("Good to see ", s, " finally ", ACTION_PAST, "."),
        ("Thanks for ", REPORT_GERUND, " ", th, "."),
        ("Does anyone know when ", th, " ", TIME_VERB, "?"),
        (s, " should ", ACTION, " before ", EVENT, "."),
        ("My ", FAMILY, " have followed ", th, " for ", HOW_LONG, " years."),
        ("Let's wait and see what ", s, " decides about ", th, "."),
        (s, " did a decent job with ", th, "."),
        ("I moved here ", HOW_LONG, " years ago and ", th, " has ", CHANGE, "."),
        ("Hope ", s, " will ", ACTION, "."),
        ("It would be nice if ", s, " would ", ACTION, "."),
        ("Can someone explain how ", th, " affects renters?"),
        ("Say what you want about ", s, ", ", th, " is ", POS_ADJ, "."),
    ]
    critical = [
        ("I disagree with ", s, " on ", th, "."),
        (th, " is a waste of ", RESOURCE, "."),
        ("I'm tired of hearing about ", th, "."),
        ("Shame on ", s, " for ", BAD_GERUND, " ", th, "."),
        ("The numbers in ", th, " don't add up."),
        ("Another ", NEG_ADJ, " decision by ", s, "."),
        ("Nobody asked for ", th, "."),
        (th, " is ", NEG_ADJ, " and ", s, " knows it."),
        ("How much more will ", th, " cost us?"),
        ("This is why I stopped ", HABIT, "."),
        ("What a ", NEG_NOUN, " ", th, " turned out to be."),
        (s, " has no plan for ", th, "."),
        ("Funny how ", s, " never mentions ", th, "."),
    ]
    toxic = [  # aimed at a person: full weight
        (("You are ", NP_INSULT, "."), 1.0),
        (("What ", NP_INSULT, "."), 0.95),
        (("Only ", NP_INSULT, " would ", BELIEVE, "."), 0.9),
        ((s, " is ", NP_INSULT, "."), 0.9),
        (("Anyone who supports ", th, " is ", ADJ_INSULT, "."), 0.9),
        ((DISMISS, ", you ", N_INSULT, "."), 1.1),
        ((DISMISS, "."), 0.9),
        (("Your comment is ", ADJ_INSULT, "."), 0.85),
        (("You sound ", ADJ_INSULT, "."), 0.9),
        (("Everything you write is ", OBSCENE, "."), 0.9),
        (("What the ", WTF, " is ", s, " thinking?"), 0.8),
        ((THREAT, "."), 1.0),
        (("Seriously, ", THREAT, "."), 1.0),
        (("Go read a book, you ", N_INSULT, "."), 1.0),
        (("The people running ", th, " are ", ADJ_INSULT, "."), 0.85),
    ]
    mild = [  # aimed at a thing: about half
        ((th, " is ", ADJ_INSULT, "."), 0.5),
        (("What a ", ADJ_PLAIN, " idea."), 0.5),
        (("This article is ", OBSCENE, "."), 0.55),
        (("The whole thing with ", th, " is ", OBSCENE, "."), 0.5),
    ]
    benign = [  # negated or quoted / reported: barely counts
        (("I'm not calling anyone ", NP_INSULT, ", but ", PLAIN_CLAUSE, "."), 0.15),
        (("Nobody here is ", ADJ_PLAIN, ", we just disagree."), 0.12),
        ((s, " is not ", NP_INSULT, ", just wrong about ", th, "."), 0.2),
        (("No need to call people ", ADJ_PLAIN, "."), 0.12),
        (("He called ", s, ' "', NP_INSULT, '" in the interview.'), 0.2),
        (("The article says ", s, ' told protesters to "', DISMISS, '".'), 0.2),
        (('Calling people "', ADJ_PLAIN, '" does not help anyone.'), 0.12),
        (('My kid came home saying "', DISMISS, '" after school, so we talked about it.'), 0.15),
        (("Some commenters here call everyone ", NP_INSULT, ", please keep it civil."), 0.15),
    ]
    return {
        "neutral": [(p, 0.0) for p in neutral],
        "critical": [(p, 0.0) for p in critical],
        "toxic": toxic,
        "mild": mild,
        "benign": benign,
    }


_TEMPLATES = [_templates(t) for t in TOPICS]


def _identity_templates(ident: Identity) -> list[tuple]:
    return [
        (ident.self_, ", I think ", _ANY_THING, " is ", POS_ADJ, "."),
        (ident.self_, ", I worry about ", _ANY_THING, "."),
        (ident.self_, ", I have to say ", _ANY_THING, " is ", NEG_ADJ, "."),
        (ident.group, " will be affected by ", _ANY_THING, " too."),
        (ident.group, " were left out of the debate on ", _ANY_THING, "."),
        ("What about ", ident.group, "?"),
        ("My ", ident.person, " says ", _ANY_THING, " is ", POS_ADJ, "."),
        ("My ", ident.person, " was at the meeting about ", _ANY_THING, "."),
        ("I talked to ", ident.group, " about ", _ANY_THING, " last week."),
    ]


_ANY_THING = sorted({x for t in TOPICS for x in t.things})
_IDENTITY_TEMPLATES = {name: _identity_templates(ident) for name, ident in IDENTITIES.items()}


def _cumulative(weights: list[float]) -> list[float]:
    total, acc, out = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


_NAMES = list(IDENTITIES)
_CUM_OTHER = _cumulative([_MENTION_WEIGHTS[n] for n in _NAMES])
_CUM_TOXIC = _cumulative(
    [_MENTION_WEIGHTS[n] * (TOXIC_MENTION_BOOST if n in BIASED_IDENTITIES else 1.0) for n in _NAMES]
)
_CUM_NSENT = _cumulative(list(N_SENTENCES_W))


def _pick_cum(u: float, cum: list[float]) -> int:
    for i, c in enumerate(cum):
        if u < c:
            return i
    return len(cum) - 1


class _Row:
    """Builds one comment from a shared `random.Random`; keeps the marker score as it fills slots."""

    __slots__ = ("r", "score")

    def __init__(self, r: random.Random) -> None:
        self.r = r
        self.score = 0.0

    def fill(self, parts: tuple, mult: float = 0.0) -> str:
        rnd = self.r.random
        out = []
        for p in parts:
            if type(p) is str:
                out.append(p)
            elif type(p) is list:
                out.append(p[int(rnd() * len(p))])
            else:  # Marker
                i = int(rnd() * len(p.words))
                out.append(p.words[i])
                self.score += p.weights[i] * mult
        s = "".join(out)
        return s[0].upper() + s[1:]


def _typo(text: str, r: random.Random) -> str:
    """Swap two adjacent letters inside one random word of 4+ letters (a realistic keyboard slip)."""
    words = text.split(" ")
    cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not cands:
        return text
    i = cands[int(r.random() * len(cands))]
    w = words[i]
    j = 1 + int(r.random() * (len(w) - 2))
    words[i] = w[: j - 1] + w[j] + w[j - 1] + w[j + 1 :]
    return " ".join(words)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -30 else 0.0


def _one_row(r: random.Random, n_ident: int) -> tuple[str, float, int, list[float] | None]:
    """One comment: (text, target, mentioned identity index or -1, identity annotations or None)."""
    rnd = r.random
    row = _Row(r)
    tpl = _TEMPLATES[int(rnd() * len(_TEMPLATES))]

    u = rnd()
    if u < P_TOXIC:
        kind = "toxic"
    elif u < P_TOXIC + P_MILD:
        kind = "mild"
    elif u < P_TOXIC + P_MILD + P_BENIGN_MARKER:
        kind = "benign"
    elif u < P_TOXIC + P_MILD + P_BENIGN_MARKER + P_CRITICAL:
        kind = "critical"
    else:
        kind = "neutral"
    toxic_intent = kind == "toxic"

    n = N_SENTENCES[_pick_cum(rnd(), _CUM_NSENT)]
    sentences: list[str] = []
    caps_p, bang_p = (0.25, 0.3) if toxic_intent else (0.08, 0.1)
    if kind in ("toxic", "mild", "benign"):
        n_marked = 2 if (toxic_intent and rnd() < 0.2) else 1
        for _ in range(n_marked):
            parts, mult = tpl[kind][int(rnd() * len(tpl[kind]))]
            before = row.score
            s = row.fill(parts, mult * MARKER_SCALE)
            if kind != "benign":
                if rnd() < caps_p:  # shouting raises intensity
                    s = s.upper()
                    row.score += (row.score - before) * 0.25
                if rnd() < bang_p:
                    s = s[:-1] + "!!"
                    row.score += (row.score - before) * 0.1
            sentences.append(s)
    filler_kind = "critical" if kind in ("critical", "toxic") or rnd() < 0.3 else "neutral"
    pool = tpl[filler_kind]
    while len(sentences) < n:
        if rnd() < 0.25:
            generic = GENERIC_NEG if filler_kind == "critical" else GENERIC_POS
            sentences.append(generic[int(rnd() * len(generic))])
        else:
            sentences.append(row.fill(pool[int(rnd() * len(pool))][0]))

    # Identity mention: a neutral sentence; frequency depends on toxic intent (the planted bias).
    mention = -1
    if rnd() < (P_MENTION_TOXIC if toxic_intent else P_MENTION_OTHER):
        mention = _pick_cum(rnd(), _CUM_TOXIC if toxic_intent else _CUM_OTHER)
        itpl = _IDENTITY_TEMPLATES[_NAMES[mention]]
        sentences.insert(int(rnd() * (len(sentences) + 1)), row.fill(itpl[int(rnd() * len(itpl))]))
    elif len(sentences) > 1 and rnd() < 0.5:
        sentences.insert(0, sentences.pop())  # vary where the marked sentence sits

    text = " ".join(sentences)
    if rnd() < 0.08:
        text = _typo(text, r)
    if rnd() < 0.02:
        text = text.lower()
    if rnd() < 0.07:
        pool_e = EMOJI_ANGRY if (toxic_intent or filler_kind == "critical") else EMOJI_CALM
        text = text + " " + pool_e[int(rnd() * len(pool_e))]

    # Latent toxicity -> k annotators' votes.
    z = BASE_Z["marker" if kind in ("toxic", "mild", "benign") else kind] + row.score + r.gauss(0.0, NOISE_SD)
    if mention >= 0 and _NAMES[mention] in BIASED_IDENTITIES:
        z += ANNOTATOR_BIAS
    p = _sigmoid(z)
    k = 4 + int(rnd() * 7)
    votes = sum(1 for _ in range(k) if rnd() < p)
    target = votes / k

    annotations = None
    if rnd() < P_ANNOTATED:
        annotations = [0.0] * n_ident
        if mention >= 0:
            ki = 4 + int(rnd() * 7)
            annotations[mention] = sum(1 for _ in range(ki) if rnd() < 0.92) / ki
    return text, target, mention, annotations


def generate_corpus(n_rows: int, seed: int, identities: list[str]) -> pd.DataFrame:
    """A deterministic synthetic toxicity corpus: columns id, text, target, then one per identity asked for.

    `identities` must be names from SUPPORTED_IDENTITIES (the DataConfig default list); they only select
    which annotation columns are returned.
    """
    if n_rows < 1:
        raise LmError(f"data.n_rows must be at least 1 for the embedded corpus, got {n_rows}")
    unknown = [c for c in identities if c not in IDENTITIES]
    if unknown:
        raise LmError(
            f"embedded corpus has no identity {unknown[0]!r}; use some of {list(SUPPORTED_IDENTITIES)}"
        )
    r = random.Random(seed)
    n_all = len(_NAMES)
    texts: list[str] = []
    targets = np.empty(n_rows, dtype=np.float64)
    ident = np.full((n_rows, n_all), np.nan, dtype=np.float64)  # (N, all identities)
    for i in range(n_rows):
        text, target, _, ann = _one_row(r, n_all)
        texts.append(text)
        targets[i] = target
        if ann is not None:
            ident[i] = ann
    data: dict[str, object] = {"id": [str(i) for i in range(n_rows)], "text": texts, "target": targets}
    for name in identities:
        data[name] = ident[:, _NAMES.index(name)]
    return pd.DataFrame(data)
