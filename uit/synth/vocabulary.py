"""The words the caption grammar has for each attribute value, as annotators say them.

Every phrase here names something the renderer draws: ``WORDS[field][value]`` are the ways to say
that ``Identity.<field>`` is ``value``. The nouns, adjectives and pronouns of a phrase are its
attribute words (the parser's truth); the rest (``FUNCTION_WORDS``: articles, prepositions,
verbs, adverbs) are not. ``words_for`` gathers every attribute word that may describe one
identity, so a test can hold each caption to what was drawn.
"""

from __future__ import annotations

from uit.synth.attributes import DARK_COLOURS, LIGHT_COLOURS, Identity

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "black", "jet black", "solid black", "all black"),
    "white": ("white", "white", "bright white", "plain white", "snow white"),
    "gray": ("gray", "grey", "gray", "grey", "medium gray", "ash gray", "heather gray"),
    "dark gray": ("dark gray", "dark grey", "charcoal", "charcoal gray", "slate gray"),
    "light gray": ("light gray", "light grey", "pale gray", "silver", "silver gray"),
    "red": ("red", "red", "bright red", "crimson", "scarlet", "cherry red"),
    "maroon": ("maroon", "burgundy", "dark red", "wine colored", "deep red", "wine red"),
    "pink": ("pink", "pink", "hot pink", "bright pink", "fuchsia", "magenta"),
    "orange": ("orange", "orange", "bright orange", "neon orange", "tangerine"),
    "yellow": (
        "yellow",
        "yellow",
        "bright yellow",
        "mustard yellow",
        "golden yellow",
        "lemon yellow",
        "mustard",
    ),
    "green": ("green", "green", "bright green", "kelly green", "emerald green", "grass green"),
    "dark green": ("dark green", "forest green", "deep green", "hunter green"),
    "light green": ("light green", "pale green", "mint green", "lime green", "mint"),
    "olive": ("olive", "olive green", "army green", "military green"),
    "blue": ("blue", "blue", "bright blue", "royal blue", "cobalt blue", "medium blue"),
    "dark blue": ("dark blue", "deep blue", "indigo", "dark denim blue"),
    "light blue": ("light blue", "pale blue", "sky blue", "baby blue", "powder blue"),
    "navy": ("navy", "navy blue", "navy colored", "midnight blue"),
    "purple": ("purple", "violet", "deep purple", "plum"),
    "brown": ("brown", "brown", "medium brown", "coffee colored", "chestnut"),
    "dark brown": ("dark brown", "chocolate brown", "chocolate", "espresso brown"),
    "tan": ("tan", "camel", "tan colored", "caramel"),
    "khaki": ("khaki", "khaki colored", "sand colored", "khaki green"),
    "beige": ("beige", "cream colored", "off-white", "cream", "ivory", "oatmeal"),
}
VAGUE_COLOUR_WORDS = {"dark": DARK_COLOURS, "light": LIGHT_COLOURS}  # "dark colored pants"
HAIR_COLOUR_WORDS = {
    "black": ("black", "dark", "jet black"),
    "brown": ("brown", "dark brown", "chestnut brown", "brunette"),
    "blonde": ("blonde", "blond", "light blonde", "golden", "sandy blonde"),
    "gray": ("gray", "grey", "silver", "salt and pepper"),
}
HAIR_LENGTH_WORDS = {
    "short": ("short", "short", "cropped", "close cropped", "very short", "chin length"),
    "long": ("long", "long", "shoulder length", "very long", "waist length"),
}

SUBJECTS = {
    "male": ("man", "man", "man", "guy", "young man", "male", "gentleman", "boy", "teenage boy",
             "adult male", "middle aged man", "older man", "elderly man", "young guy", "teenager",
             "young adult male", "college student"),
    "female": ("woman", "woman", "woman", "lady", "young woman", "girl", "female", "young lady",
               "teenage girl", "adult female", "middle aged woman", "older woman",
               "elderly woman", "young girl", "teenager", "young adult female", "college student"),
}  # fmt: skip
NEUTRAL_SUBJECTS = ("person", "person", "pedestrian", "individual", "adult", "shopper",
                    "commuter", "passerby")  # fmt: skip
PRONOUNS = {"male": ("he", "his", "him"), "female": ("she", "her", "her")}
# Words for the whole outfit or the figure, true of anyone drawn.
GENERAL_WORDS = ("outfit", "clothes", "clothing", "attire", "feet", "legs", "body", "head", "face",
                 "eyes")  # fmt: skip
# Where on the body a worn thing is: "black sneakers on his feet", "glasses on her face".
BODY_PLACES = {"hat": ("on {his} head",), "glasses": ("on {his} face", "over {his} eyes"),
               "shoe_type": ("on {his} feet",), "lower_type": ("on {his} legs",)}  # fmt: skip

WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "upper_type": {
        "t-shirt": (
            "t-shirt",
            "t-shirt",
            "tee",
            "tshirt",
            "tee shirt",
            "t shirt",
            "top",
            "shirt",
            "crew neck t-shirt",
            "casual top",
            "cotton t-shirt",
        ),
        "shirt": (
            "shirt",
            "shirt",
            "button-up shirt",
            "button down shirt",
            "collared shirt",
            "dress shirt",
            "polo shirt",
            "polo",
            "oxford shirt",
            "work shirt",
        ),
        "blouse": ("blouse", "top", "shirt", "loose blouse", "silk blouse", "chiffon top"),
        "tank top": (
            "tank top",
            "tank",
            "sleeveless top",
            "sleeveless shirt",
            "vest top",
            "camisole",
            "muscle shirt",
        ),
        "hoodie": (
            "hoodie",
            "hooded sweatshirt",
            "hooded jacket",
            "sweatshirt",
            "hooded top",
            "zip hoodie",
        ),
        "jacket": (
            "jacket",
            "jacket",
            "windbreaker",
            "zip-up jacket",
            "bomber jacket",
            "blazer",
            "sport coat",
            "rain jacket",
            "track jacket",
            "denim jacket",
            "puffer jacket",
        ),
        "coat": (
            "coat",
            "overcoat",
            "long coat",
            "trench coat",
            "winter coat",
            "parka",
            "knee length coat",
            "wool coat",
            "raincoat",
        ),
        "sweater": (
            "sweater",
            "jumper",
            "pullover",
            "knit sweater",
            "sweatshirt",
            "cardigan",
            "crewneck sweater",
            "wool sweater",
        ),
        "dress": (
            "dress",
            "dress",
            "knee length dress",
            "one piece dress",
            "sundress",
            "summer dress",
            "shift dress",
            "casual dress",
            "midi dress",
        ),
        "jumpsuit": (
            "jumpsuit",
            "one piece jumpsuit",
            "romper",
            "overalls",
            "playsuit",
            "one piece outfit",
        ),
    },
    "sleeve": {
        "short": ("short-sleeved", "short sleeved", "short sleeve", "half sleeve"),
        "long": ("long-sleeved", "long sleeved", "long sleeve", "full sleeve"),
        "sleeveless": ("sleeveless", "strapless", "spaghetti strap"),
    },
    "pattern": {
        "striped": ("striped", "stripe", "pinstriped", "stripy", "pinstripe"),
        "checked": ("plaid", "checked", "checkered", "tartan", "gingham", "flannel"),
        "floral": ("floral", "flowered", "flower print", "floral print", "flowery"),
        "logo": ("graphic", "printed", "logo", "print"),
    },
    "lower_type": {
        "trousers": (
            "trousers",
            "pants",
            "pants",
            "slacks",
            "long pants",
            "dress pants",
            "sweatpants",
            "chinos",
            "cargo pants",
            "track pants",
            "joggers",
        ),
        "jeans": (
            "jeans",
            "jeans",
            "denim jeans",
            "denims",
            "denim pants",
            "skinny jeans",
            "straight leg jeans",
            "denim trousers",
        ),
        "shorts": (
            "shorts",
            "shorts",
            "knee length shorts",
            "cargo shorts",
            "short pants",
            "capris",
            "bermuda shorts",
            "athletic shorts",
            "denim shorts",
        ),
        "skirt": (
            "skirt",
            "skirt",
            "knee length skirt",
            "mini skirt",
            "short skirt",
            "a-line skirt",
            "pencil skirt",
        ),
        "leggings": ("leggings", "tights", "yoga pants", "tight pants", "stretch pants"),
    },
    "shoe_type": {
        "sneakers": (
            "sneakers",
            "sneakers",
            "tennis shoes",
            "running shoes",
            "trainers",
            "athletic shoes",
            "sport shoes",
            "gym shoes",
            "canvas shoes",
            "kicks",
        ),
        "shoes": (
            "shoes",
            "shoes",
            "dress shoes",
            "loafers",
            "flats",
            "leather shoes",
            "casual shoes",
            "slip-on shoes",
            "oxfords",
            "ballet flats",
        ),
        "boots": (
            "boots",
            "boots",
            "ankle boots",
            "combat boots",
            "knee high boots",
            "rain boots",
            "work boots",
        ),
        "sandals": (
            "sandals",
            "sandals",
            "flip flops",
            "flip-flops",
            "slippers",
            "slides",
            "strappy sandals",
        ),
        "heels": ("heels", "high heels", "high heel shoes", "pumps", "stilettos", "wedges"),
    },
    "socks": {"*": ("socks", "ankle socks", "crew socks", "knee socks", "tube socks")},
    "glasses": {
        "glasses": (
            "glasses",
            "glasses",
            "eyeglasses",
            "spectacles",
            "eye glasses",
            "prescription glasses",
            "wire rim glasses",
        ),
        "sunglasses": (
            "sunglasses",
            "sunglasses",
            "shades",
            "sun glasses",
            "aviators",
            "aviator sunglasses",
        ),
    },
    "hat": {
        "cap": ("cap", "cap", "baseball cap", "ball cap", "baseball hat", "visor cap", "snapback"),
        "beanie": ("beanie", "knit hat", "wool hat", "knit cap", "winter hat", "toque"),
        "hat": ("hat", "hat", "sun hat", "wide brim hat", "bucket hat", "fedora", "straw hat"),
    },
    "scarf": {"*": ("scarf", "scarf", "neck scarf", "wool scarf", "knit scarf", "shawl")},
    "belt": {"*": ("belt", "belt", "leather belt", "thin belt", "wide belt", "waist belt")},
    "bag_type": {
        "backpack": (
            "backpack",
            "backpack",
            "rucksack",
            "back pack",
            "book bag",
            "school bag",
            "bag",
            "knapsack",
            "daypack",
        ),
        "handbag": (
            "handbag",
            "purse",
            "purse",
            "hand bag",
            "tote bag",
            "tote",
            "bag",
            "clutch",
            "pocketbook",
        ),
        "shoulder bag": (
            "shoulder bag",
            "messenger bag",
            "crossbody bag",
            "satchel",
            "bag",
            "side bag",
            "sling bag",
            "bag strap",
        ),
    },
    "carried": {
        "umbrella": (
            "umbrella",
            "umbrella",
            "long umbrella",
            "umbrella with a handle",
            "walking umbrella",
        ),
        "phone": (
            "phone",
            "phone",
            "cell phone",
            "cellphone",
            "mobile phone",
            "smartphone",
            "smart phone",
            "mobile",
        ),
        "bottle": (
            "bottle",
            "water bottle",
            "bottle of water",
            "plastic bottle",
            "drink",
            "soda bottle",
            "sports bottle",
        ),
        "paper bag": ("paper bag", "grocery bag", "paper sack", "bag", "gift bag", "takeout bag"),
    },
}
# Details of a garment or thing, true of every drawing of it: "a hoodie with the hood down".
DETAILS: dict[str, dict[str, tuple[str, ...]]] = {
    "upper_type": {
        "shirt": ("with buttons down the front", "with a collar", "with a pocket on the chest"),
        "hoodie": ("with the hood down", "with a hood", "with a zipper down the front"),
        "jacket": ("with a zipper down the front", "with an open front", "with a front zipper"),
        "coat": (
            "that reaches below the hips",
            "with buttons down the front",
            "with an open front",
        ),
        "dress": ("that reaches the knees", "that stops above the knees", "with a wide hem"),
        "jumpsuit": ("that covers the legs", "with long legs"),
    },
    "lower_type": {
        "trousers": ("that reach the ankles", "full length"),
        "jeans": ("with visible seams", "that reach the ankles"),
        "shorts": ("that reach just above the knees", "that stop above the knee"),
        "skirt": ("that reaches the knees", "that stops above the knees"),
        "leggings": ("that hug the legs", "tight fitting"),
    },
    "shoe_type": {
        "boots": ("that come up to the shins", "up to the calves"),
        "sandals": ("with straps across the toes", "with open toes"),
        "heels": ("with a high heel", "with thin heels"),
        "sneakers": ("with white soles", "with thick soles"),
    },
    "bag_type": {
        "backpack": ("with two straps", "with both straps on"),
        "handbag": ("with a short handle", "with handles"),
        "shoulder bag": ("with a long strap", "on a long strap"),
    },
}

# Where a carried thing is: "in his left hand", "over her right shoulder", "on his back".
PLACE_WORDS = {
    "hand": ("in {his} {side} hand", "in the {side} hand", "with {his} {side} hand",
             "in {his} hand", "in {his} {side} hand", "in one hand", "at {his} {side} side",
             "by {his} side"),
    "shoulder": ("over {his} {side} shoulder", "on {his} {side} shoulder",
                 "on the {side} shoulder", "over {his} shoulder", "across {his} body"),
    "back": ("on {his} back", "over both shoulders", "on {his} shoulders"),
}  # fmt: skip

# Words that are not attribute words wherever the grammar writes them.
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "some",
        "one",
        "both",
        "and",
        "or",
        "but",
        "with",
        "without",
        "of",
        "in",
        "on",
        "over",
        "under",
        "across",
        "around",
        "at",
        "to",
        "from",
        "by",
        "into",
        "onto",
        "near",
        "along",
        "below",
        "above",
        "up",
        "down",
        "through",
        "toward",
        "towards",
        "out",
        "off",
        "is",
        "are",
        "has",
        "have",
        "had",
        "be",
        "being",
        "been",
        "wears",
        "wearing",
        "toting",
        "wore",
        "carries",
        "carrying",
        "holds",
        "holding",
        "has",
        "appears",
        "appear",
        "seems",
        "seem",
        "looks",
        "look",
        "also",
        "donning",
        "clutching",
        "gripping",
        "two",
        "what",
        "like",
        "kind",
        "sort",
        "possibly",
        "probably",
        "maybe",
        "likely",
        "furthermore",
        "moreover",
        "addition",
        "very",
        "all",
        "additionally",
        "as",
        "well",
        "paired",
        "plus",
        "too",
        "there",
        "can",
        "seen",
        "dressed",
        "sporting",
        "dons",
        "underneath",
        "beneath",
        "while",
        "just",
        "who",
        "which",
        "it",
        "its",
    ]
)


def attribute_words(text: str) -> list[str]:
    """The attribute words of a grammar phrase: every word that is not a function word."""
    return [w for w in text.split() if w[0].isalpha() and w.lower() not in FUNCTION_WORDS]


def words_for(p: Identity) -> set[str]:
    """Every attribute word the grammar may use to describe ``p``."""
    found = set(_subject_words(p))
    for tables in (WORDS, DETAILS):
        for field, table in tables.items():
            value = getattr(p, field)
            if value and value != "none":
                found |= _split(table.get(value) or table.get("*", ()))
    for field in ("upper_colour", "lower_colour", "shoe_colour", "socks", "bag_colour",
                  "carried_colour", "hat_colour", "scarf", "belt"):  # fmt: skip
        found |= _colour_words(getattr(p, field))
    found |= _split(HAIR_COLOUR_WORDS[p.hair_colour] + HAIR_LENGTH_WORDS[p.hair_length])
    found |= {"hair", "pair", *GENERAL_WORDS, *_place_words(p)}
    if p.pattern in ("striped", "checked", "floral", "logo"):
        found |= _pattern_nouns(p.pattern)
    if p.sleeve != "sleeveless":
        found.add("sleeves")
    return found


def _split(phrases: tuple[str, ...]) -> set[str]:
    return {word for phrase in phrases for word in attribute_words(phrase)}


def _subject_words(p: Identity) -> set[str]:
    return _split(SUBJECTS[p.gender] + NEUTRAL_SUBJECTS + PRONOUNS[p.gender])


def _colour_words(colour: str) -> set[str]:
    if not colour:
        return set()
    found = _split(COLOUR_WORDS[colour]) | {"colored"}
    return found | {word for word, colours in VAGUE_COLOUR_WORDS.items() if colour in colours}


def _place_words(p: Identity) -> set[str]:
    found: set[str] = set()
    if p.bag_type == "backpack":
        found |= {"back", "shoulders"}
    if p.bag_type in ("handbag", "shoulder bag"):
        found |= {p.bag_side, "hand" if p.bag_type == "handbag" else "shoulder", "body", "side"}
    if p.carried:
        found |= {p.carried_side, "hand", "side"}
    if p.scarf:
        found.add("neck")
    if p.belt:
        found.add("waist")
    return found


PATTERN_NOUNS = {
    "striped": ("stripes", "horizontal stripes"),
    "checked": ("plaid pattern", "checks", "checkered pattern"),
    "floral": ("flowers", "floral pattern", "flower pattern"),
    "logo": ("logo", "graphic", "design", "print", "writing", "picture", "front", "chest"),
}


def _pattern_nouns(pattern: str) -> set[str]:
    return _split(PATTERN_NOUNS[pattern])
