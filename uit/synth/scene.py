"""Filler about the scene and posture: words that describe no attribute of the person.

``filler`` writes one participle phrase ("walking along a busy road in the afternoon", "standing
with her hands in her pockets"); all its words are filler words in the ground truth.
"""

from __future__ import annotations

import random

MOVING = ("walking", "walking", "walking", "strolling", "heading", "hurrying", "moving",
          "passing", "making {his} way", "wandering", "rushing", "jogging", "stepping")  # fmt: skip
STILL = ("standing", "standing", "waiting", "pausing", "lingering", "resting", "stopping",
         "idling", "stationed")  # fmt: skip
PATHS = (
    "along the street", "down the sidewalk", "across the crosswalk", "through a parking lot",
    "across a plaza", "past a row of bikes", "along a busy road", "through a crowded square",
    "down a narrow alley", "across the campus", "along a brick path", "toward the subway station",
    "past a glass door", "down some concrete steps", "along a metal fence", "through the lobby",
    "past a flower bed", "along the river", "through the market", "toward the camera",
    "away from the camera", "down the hallway", "across an open courtyard", "along the curb",
    "up a flight of stairs", "over a small bridge", "through the train station",
    "past a group of students", "into a building", "out of a store", "across a wide road",
    "along a tree lined avenue", "through a shopping center", "past some parked scooters",
    "near the edge of the road", "in the direction of the bus stop", "along the waterfront",
    "through an underground passage", "past a coffee shop", "between two buildings",
    "past a souvenir stall", "around a construction site", "toward a taxi rank",
    "through a revolving door", "along the harbor", "past the ticket barriers",
    "across a footbridge", "along a cobblestone lane", "past a bakery", "toward the exit",
    "through a quiet neighborhood", "along the promenade", "past a bookstore",
)  # fmt: skip
SPOTS = (
    "near a bus stop", "outside a store", "in front of a shop window", "beside a tall building",
    "next to a parked car", "under some trees", "by a fountain", "near the entrance of a mall",
    "near a lamp post", "on the pavement", "by a railing", "next to a trash can", "near a bench",
    "at the corner", "beside a pillar", "in a shopping area", "near a white van",
    "in the shade", "next to a bicycle rack", "by the road", "on a tiled floor",
    "near a vending machine", "under an awning", "beside a hedge", "at an intersection",
    "outside a restaurant", "in front of an office building", "near a ticket machine",
    "on a platform", "next to a traffic light", "under a bridge", "beside a glass wall",
    "near the escalator", "in a large hall", "on a gravel path", "by a row of shops",
    "outside the library", "near a newsstand", "in an empty lot", "by the gate",
    "beside a potted plant", "near a fire hydrant", "under a street sign", "by a parking meter",
    "next to a mailbox", "in a waiting area", "near a food cart", "beside a statue",
    "outside a pharmacy", "in the doorway of a cafe", "near a bulletin board", "by a kiosk",
    "beside a recycling bin", "near a ramp", "on a balcony", "in a corridor", "near a garage",
    "beside a museum", "outside a cinema", "next to a scaffold", "by an elevator",
)  # fmt: skip
TIMES = ("on a sunny day", "in the afternoon", "in the morning", "on a cloudy day",
         "in the evening", "during the day", "in bright sunlight", "on a warm day",
         "on a cold day", "at noon", "in the rain", "in daylight", "at dusk", "on a windy day",
         "during rush hour", "on a weekend")  # fmt: skip
POSTURES = (
    "with {his} hands in {his} pockets", "with {his} arms at {his} sides", "with {his} head down",
    "in mid stride", "seemingly in a hurry", "deep in thought", "with a relaxed posture",
    "with {his} arms crossed", "with {his} hands clasped behind {his} back",
    "with a confident stride", "at a slow pace", "at a brisk pace", "with {his} back straight",
)  # fmt: skip
GESTURES = (
    "looking down at the ground", "looking straight ahead", "looking to the side",
    "facing the camera", "facing away from the camera", "turned slightly to the side",
    "glancing over {his} shoulder", "taking a step forward", "talking to someone nearby",
    "waving at someone", "leaning against a wall", "checking the time", "smiling at a friend",
    "reaching into a pocket", "adjusting {his} collar", "looking at something in the distance",
    "chatting with a companion", "following a crowd of people", "stopping to look around",
    "squinting in the sunlight", "yawning", "sipping coffee from a paper cup",
    "scanning the shelves of a store", "greeting an acquaintance", "peering at a map",
    "holding a door open for someone", "stretching {his} arms", "tying a shoelace",
    "humming a tune", "listening to music", "counting some coins", "searching for a taxi",
    "reading a sign", "watching the traffic", "laughing with friends", "eating a snack",
    "pointing at a building", "wiping {his} forehead", "shielding {his} eyes from the sun",
    "whistling", "feeding some pigeons", "queueing at a kiosk",
)  # fmt: skip


def filler(rng: random.Random, he: str, his: str) -> str:
    """One scene or posture phrase, with the person's pronouns."""
    kind = rng.random()
    if kind < 0.45:
        text = f"{rng.choice(MOVING)} {rng.choice(PATHS)}"
    elif kind < 0.75:
        text = f"{rng.choice(STILL)} {rng.choice(SPOTS)}"
    elif kind < 0.88:
        text = f"{rng.choice(MOVING + STILL)} {rng.choice(POSTURES)}"
    else:
        text = rng.choice(GESTURES)
    if rng.random() < 0.2:
        text = f"{text} {rng.choice(TIMES)}"
    return text.format(he=he, his=his)
