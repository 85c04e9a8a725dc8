"""The generated shop behind the synthetic dataset: catalog, users, purchases, reviews, plain-text corpus.

Everything is drawn from one seeded numpy Generator, so a (scale, seed) pair always builds the same world.
The rules the task writers in ``synthetic.py`` rely on live here, next to the data they describe:
- an item is (category, brand, noun, color, material, size, price, quality); its title is
  "{brand} {color} {material} {noun}" and is unique in the catalog;
- each category has two complementary noun pairs (kettle/mug, pan/spatula): buying one makes the other a
  likely next purchase, and the product relation of two items of one category follows from their nouns
  (``relation``);
- a user favours two categories, one brand in each and one color; purchases follow those weights
  (``sample_purchases``);
- a rating is the item's quality, raised when the item has the user's brand and color, plus noise;
  review words carry the rating (``review_text``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

# name, source (the sub-dataset a row belongs to), two complementary noun pairs, materials, brands
_CATEGORY_TABLE: tuple[tuple[str, str, tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("Kitchen", "home", (("kettle", "mug"), ("pan", "spatula")), ("steel", "ceramic", "glass"), ("Acme", "Nova", "Delta")),
    ("Garden", "home", (("hose", "nozzle"), ("shovel", "gloves")), ("rubber", "steel", "plastic"), ("Oak", "Terra", "Fox")),
    ("Office", "home", (("notebook", "pen"), ("lamp", "bulb")), ("plastic", "metal", "wood"), ("Atlas", "Prime", "Nord")),
    ("Pets", "home", (("leash", "collar"), ("bowl", "mat")), ("nylon", "leather", "cotton"), ("Harbor", "Sun", "Bay")),
    ("Sports", "leisure", (("racket", "ball"), ("bike", "helmet")), ("nylon", "rubber", "carbon"), ("Summit", "Bolt", "Core")),
    ("Toys", "leisure", (("kite", "spool"), ("robot", "charger")), ("plastic", "wood", "fabric"), ("Luna", "Echo", "Max")),
    ("Electronics", "leisure", (("speaker", "cable"), ("camera", "tripod")), ("plastic", "aluminum", "rubber"), ("Zenith", "Pulse", "Arc")),
    ("Beauty", "leisure", (("brush", "mirror"), ("lotion", "sponge")), ("bamboo", "glass", "plastic"), ("Iris", "Coral", "Zen")),
)
COLORS: tuple[str, ...] = ("red", "blue", "black", "white", "green", "gray", "pink", "yellow")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SOURCES: tuple[str, ...] = ("home", "leisure")
OPINIONS: dict[int, str] = {5: "excellent", 4: "good", 3: "average", 2: "disappointing", 1: "poor"}
MAX_SCALE = 10  # titles stay unique up to 288 items per category

ITEMS_PER_CATEGORY = 25
USERS = 100
MIN_PURCHASES, MAX_PURCHASES = 7, 10
P_PRIMARY, P_SECONDARY, P_COMPLEMENT = 0.6, 0.3, 0.3
REVIEWS_PER_ITEM = 2

# Relations of two items of one category (PRP): same noun, complementary nouns, or just the same shelf.
SIMILAR, ALSO_BOUGHT, ALSO_VIEWED = "similar", "also_bought", "also_viewed"

OPENERS: dict[int, tuple[str, ...]] = {
    5: ("Absolutely love this {noun}.", "Best {noun} I have ever owned.", "This {noun} is perfect."),
    4: ("Good {noun} overall.", "This {noun} works well.", "Nice {noun} for the price."),
    3: ("The {noun} is okay.", "An average {noun}.", "This {noun} is fine, I guess."),
    2: ("Disappointed with this {noun}.", "The {noun} is not great.", "A weak {noun} for the price."),
    1: ("Terrible {noun}.", "This {noun} broke in a day.", "Worst {noun} ever."),
}
CLOSERS: dict[int, tuple[str, ...]] = {
    5: ("Highly recommend!", "Amazing quality.", "Exceeded my expectations."),
    4: ("Happy with the purchase.", "Would buy again.", "Solid quality."),
    3: ("Nothing special.", "It does the job.", "Mixed feelings."),
    2: ("Would not buy again.", "Quality is lacking.", "Expected better."),
    1: ("Total waste of money.", "Returned at once.", "Avoid at all costs."),
}


@dataclasses.dataclass(frozen=True, eq=False)  # the CATEGORIES are singletons: compare by identity
class Category:
    """A shop category: its source (sub-dataset), complementary noun pairs, materials and brands."""

    name: str
    source: str
    pairs: tuple[tuple[str, str], ...]
    materials: tuple[str, ...]
    brands: tuple[str, ...]

    @property
    def nouns(self) -> tuple[str, ...]:
        return tuple(noun for pair in self.pairs for noun in pair)

    def complement(self, noun: str) -> str:
        """The noun bought together with ``noun``."""
        for a, b in self.pairs:
            if noun in (a, b):
                return b if noun == a else a
        raise KeyError(f"{noun!r} is not a {self.name} noun")


CATEGORIES: tuple[Category, ...] = tuple(Category(*row) for row in _CATEGORY_TABLE)


@dataclasses.dataclass(frozen=True)
class Item:
    """One product of the catalog."""

    id: int
    category: Category
    brand: str
    noun: str
    color: str
    material: str
    size: str
    price: float
    quality: int  # 1..5, the mean rating customers give it

    @property
    def title(self) -> str:
        return f"{self.brand} {self.color} {self.material} {self.noun}"

    @property
    def source(self) -> str:
        return self.category.source

    @property
    def price_text(self) -> str:
        return f"${self.price:.2f}"


@dataclasses.dataclass(frozen=True)
class User:
    """A shopper: two favourite categories, a favourite brand in each, a favourite color."""

    id: int
    primary: Category
    secondary: Category
    brands: dict[str, str]  # category name -> favourite brand
    color: str
    purchases: tuple[Item, ...]
    ratings: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class World:
    """The catalog, the users and how both are split between train, valid and test."""

    scale: int
    seed: int
    items: tuple[Item, ...]
    users: tuple[User, ...]
    user_split: dict[str, tuple[User, ...]]
    item_split: dict[str, tuple[Item, ...]]
    by_category: dict[str, tuple[Item, ...]]

    def items_where(self, **fields) -> list[Item]:
        """Items whose attributes equal every given value (``category=`` takes a Category)."""
        pool = self.by_category[fields["category"].name] if "category" in fields else self.items
        return [it for it in pool if all(getattr(it, k) == v for k, v in fields.items())]

    def items_of_source(self, source: str) -> list[Item]:
        return [it for it in self.items if it.source == source]


def relation(a: Item, b: Item) -> str:
    """Relation of two items of one category: same noun -> similar, complements -> bought, else viewed."""
    if a.category != b.category:
        raise ValueError("relations are defined within one category")
    if a.noun == b.noun:
        return SIMILAR
    if a.category.complement(a.noun) == b.noun:
        return ALSO_BOUGHT
    return ALSO_VIEWED


def stars(rating: int) -> str:
    """ "1 star", "4 stars"."""
    return f"{rating} star" + ("" if rating == 1 else "s")


def review_text(item: Item, rating: int, rng: np.random.Generator, *, with_fact: bool = False) -> str:
    """A short review whose opener and closer are drawn from the words of ``rating`` only."""
    parts = [str(rng.choice(OPENERS[rating])).format(noun=item.noun)]
    if with_fact:
        parts.append(f"It is {item.color} and made of {item.material}.")
    parts.append(str(rng.choice(CLOSERS[rating])))
    return " ".join(parts)


def rate(item: Item, fav_brands: dict[str, str], fav_color: str, rng: np.random.Generator) -> int:
    """The world's rating: quality, +1 for the user's brand and color together, noise of ±1 sometimes."""
    bonus = int(fav_brands.get(item.category.name) == item.brand and fav_color == item.color)
    noise = int(rng.choice([-1, 0, 0, 0, 1]))
    return int(np.clip(item.quality + bonus + noise, 1, 5))


def _build_items(scale: int, rng: np.random.Generator) -> tuple[Item, ...]:
    items: list[Item] = []
    for cat_index, cat in enumerate(CATEGORIES):
        keys = [(b, n, c, m) for b in cat.brands for n in cat.nouns for c in COLORS for m in cat.materials]
        chosen = rng.choice(len(keys), size=ITEMS_PER_CATEGORY * scale, replace=False)
        base_price = 8.0 + 6.0 * cat_index
        for key_index in sorted(int(k) for k in chosen):
            brand, noun, color, material = keys[key_index]
            size = SIZES[int(rng.integers(len(SIZES)))]
            tier = 1.0 + 0.4 * cat.brands.index(brand)
            price = base_price * tier * (1.0 + 0.5 * SIZES.index(size)) * float(rng.uniform(0.9, 1.1))
            quality = int(rng.integers(1, 6))
            items.append(Item(len(items), cat, brand, noun, color, material, size, round(price, 2), quality))
    return tuple(items)


def _pick(candidates: list[Item], fav_brand: str, fav_color: str, rng: np.random.Generator) -> Item:
    """One item, weighted towards the user's brand (x4) and color (x3)."""
    weights = np.array([1.0 + 3.0 * (it.brand == fav_brand) + 2.0 * (it.color == fav_color) for it in candidates])
    return candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]


def sample_purchases(items: tuple[Item, ...], primary: Category, secondary: Category,
                     brands: dict[str, str], color: str, length: int,
                     rng: np.random.Generator) -> list[Item]:
    """A purchase sequence: complements of the last item, else the favourite categories, else anything."""
    by_cat = {cat.name: [it for it in items if it.category == cat] for cat in CATEGORIES}
    sequence: list[Item] = []
    while len(sequence) < length:
        u = float(rng.uniform())
        if sequence and u < P_COMPLEMENT:
            last = sequence[-1]
            noun = last.category.complement(last.noun)
            pool = [it for it in by_cat[last.category.name] if it.noun == noun]
        elif u < P_COMPLEMENT + (1 - P_COMPLEMENT) * P_PRIMARY:
            pool = by_cat[primary.name]
        elif u < P_COMPLEMENT + (1 - P_COMPLEMENT) * (P_PRIMARY + P_SECONDARY):
            pool = by_cat[secondary.name]
        else:
            pool = by_cat[CATEGORIES[int(rng.integers(len(CATEGORIES)))].name]
        pool = [it for it in pool if it not in sequence] or pool
        cat_name = pool[0].category.name
        sequence.append(_pick(pool, brands.get(cat_name, ""), color, rng))
    return sequence


def _build_users(items: tuple[Item, ...], scale: int, rng: np.random.Generator) -> tuple[User, ...]:
    users: list[User] = []
    for uid in range(USERS * scale):
        first, second = (CATEGORIES[int(i)] for i in rng.choice(len(CATEGORIES), size=2, replace=False))
        brands = {cat.name: str(rng.choice(cat.brands)) for cat in (first, second)}
        color = str(rng.choice(COLORS))
        length = int(rng.integers(MIN_PURCHASES, MAX_PURCHASES + 1))
        purchases = sample_purchases(items, first, second, brands, color, length, rng)
        ratings = tuple(rate(it, brands, color, rng) for it in purchases)
        users.append(User(uid, first, second, brands, color, tuple(purchases), ratings))
    return tuple(users)


def _split(things: tuple, rng: np.random.Generator) -> dict[str, tuple]:
    """70% train, 10% valid, 20% test, by a seeded permutation."""
    order = rng.permutation(len(things))
    n_train, n_valid = int(0.7 * len(things)), int(0.1 * len(things))
    pick = lambda idx: tuple(things[int(i)] for i in sorted(idx))
    return {"train": pick(order[:n_train]), "valid": pick(order[n_train:n_train + n_valid]),
            "test": pick(order[n_train + n_valid:])}


def build_world(scale: int = 1, seed: int = 0) -> World:
    """The world of ``scale`` times 200 items and 100 users, drawn from ``seed``."""
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be in 1..{MAX_SCALE}, got {scale}")
    rng = np.random.default_rng([seed, 0])
    items = _build_items(scale, rng)
    users = _build_users(items, scale, rng)
    by_category = {cat.name: tuple(it for it in items if it.category is cat) for cat in CATEGORIES}
    return World(scale, seed, items, users, _split(users, rng), _split(items, rng), by_category)


def world_corpus(world: World, seed: int = 0) -> list[str]:
    """Plain-text documents about the world: listings, reviews, shopping facts, train users' histories.

    Valid and test users' histories are left out, so the corpus never holds their answers.
    """
    rng = np.random.default_rng([seed, 1])
    docs: list[str] = []
    for it in world.items:
        docs.append(f"{it.title}. Category: {it.category.name}. Brand: {it.brand}. Color: {it.color}. "
                    f"Material: {it.material}. Size: {it.size}. Price: {it.price_text}. "
                    f"Customers find it {OPINIONS[it.quality]}.")
        for _ in range(REVIEWS_PER_ITEM):
            rating = int(np.clip(it.quality + rng.choice([-1, 0, 0, 1]), 1, 5))
            docs.append(f"Review of the {it.title}, {stars(rating)}: {review_text(it, rating, rng, with_fact=True)}")
    for cat in CATEGORIES:
        for a, b in cat.pairs:
            docs.append(f"People who buy a {a} often buy a {b} next, and people who buy a {b} often buy a {a}.")
        docs.append(f"The {cat.name} category sells {', '.join(cat.nouns)} by {', '.join(cat.brands)}.")
    for user in world.user_split["train"]:
        bought = "; ".join(f"{it.title} ({stars(r)})" for it, r in zip(user.purchases, user.ratings))
        docs.append(f"Shopper {user.id} bought, in order: {bought}.")
    return docs
