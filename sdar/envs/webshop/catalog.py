"""Seeded generator of a WebShop-style product catalogue and shopping goals, with JSON save and load.

Every product belongs to one of seven categories (``CATEGORIES``) and one of about seventy product types. A
product has a title, a category path, attributes ("machine washable", "gluten free"), option groups (size,
color, flavor, ...), a price, a description, feature bullets and reviews. A goal is built from one product: some
of its attributes, one value of some of its option groups and a price bound at or above its price, so every goal
can be met by at least its source product. The ``eval`` goals come from products that no ``train`` goal uses.

Everything is a pure function of the seed (``random.Random`` seeded from a SHA-256 digest, never ``hash()``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from sdar.errors import read_json

__all__ = [
    "CATEGORIES",
    "DEFAULT_SEED",
    "PRODUCT_TYPES",
    "SPLITS",
    "Catalog",
    "Goal",
    "Product",
    "generate_catalog",
    "load_catalog",
    "write_catalog",
]

DEFAULT_SEED = 0
SPLITS = ("train", "eval")
CATEGORIES = ("apparel", "footwear", "beauty_health", "grocery", "electronics", "home_decor", "accessories")
"""Top-level categories; a goal's category is its ``task_type``."""

PRODUCTS_FILE = "products.json"
GOALS_FILE = "goals.json"

_SIZES = ("x-small", "small", "medium", "large", "x-large", "xx-large")
_SHOE_SIZES = ("6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12")
_COLORS = ("black", "white", "navy blue", "heather grey", "red", "olive green", "pink", "beige", "burgundy",
           "light blue", "brown", "purple", "yellow", "charcoal")
_PACKS = ("pack of 1", "pack of 2", "pack of 3", "pack of 4", "pack of 6", "pack of 12")

# group name -> value pool; a type names its groups, a product draws 2-6 values from each
_GROUPS: dict[str, tuple[str, ...]] = {
    "size": _SIZES,
    "shoe size": _SHOE_SIZES,
    "color": _COLORS,
    "waist": ("28w x 30l", "30w x 30l", "32w x 32l", "34w x 32l", "36w x 32l", "38w x 34l"),
    "shade": ("nude pink", "ruby red", "berry", "coral", "mauve", "rose gold", "smoky brown", "bronze", "plum"),
    "hair color": ("natural black", "dark brown", "chestnut brown", "honey blonde", "platinum blonde", "auburn"),
    "length": ("14 inch", "16 inch", "18 inch", "20 inch", "22 inch", "24 inch"),
    "scent": ("lavender", "coconut", "eucalyptus mint", "vanilla", "unscented", "citrus", "rose"),
    "volume": ("1 fl oz", "1.7 fl oz", "3.4 fl oz", "8.5 fl oz", "16.9 fl oz", "33.8 fl oz"),
    "count": _PACKS,
    "flavor": ("original", "sea salt", "dark chocolate", "peanut butter", "vanilla bean", "honey roasted",
               "cinnamon", "mixed berry", "sweet and spicy", "lemon ginger", "caramel", "french vanilla"),
    "roast": ("light roast", "medium roast", "dark roast", "espresso roast", "decaf"),
    "weight": ("8 ounce", "12 ounce", "16 ounce", "2 pound", "5 pound"),
    "cable length": ("3 ft", "6 ft", "10 ft", "15 ft", "25 ft"),
    "device": ("iphone 13", "iphone 14", "iphone 15", "galaxy s23", "pixel 8", "galaxy a54"),
    "capacity": ("5000mah", "10000mah", "20000mah", "26800mah"),
    "bundle": ("1 camera", "2 cameras", "3 cameras", "4 cameras"),
    "switch": ("blue switch", "brown switch", "red switch", "silent switch"),
    "pillow size": ("16 x 16 inch", "18 x 18 inch", "20 x 20 inch", "22 x 22 inch", "12 x 20 inch"),
    "rug size": ("2 x 3 ft", "3 x 5 ft", "4 x 6 ft", "5 x 7 ft", "8 x 10 ft"),
    "panel size": ("42 x 63 inch", "52 x 63 inch", "52 x 84 inch", "52 x 96 inch"),
    "art size": ("12 x 16 inch", "16 x 24 inch", "24 x 36 inch", "20 x 40 inch"),
    "style": ("abstract", "floral", "landscape", "botanical", "geometric", "ocean"),
    "tiers": ("3 tier", "4 tier", "5 tier", "6 tier"),
    "bed size": ("twin", "full", "queen", "king", "california king"),
    "set size": ("set of 2", "set of 4", "set of 6"),
    "frame color": ("black frame", "tortoise frame", "gold frame", "silver frame", "clear frame"),
    "lens color": ("grey lens", "brown lens", "blue mirror lens", "green lens"),
    "metal": ("sterling silver", "yellow gold", "rose gold", "white gold"),
    "chain length": ("16 inch chain", "18 inch chain", "20 inch chain", "22 inch chain"),
    "belt size": ("size 30", "size 32", "size 34", "size 36", "size 38", "size 40"),
}


@dataclass(frozen=True)
class _TypeSpec:
    name: str
    category: str
    path: tuple[str, ...]
    nouns: tuple[str, ...]
    """Nouns of the type name (what a part-of-speech tagger would keep), lower case."""
    tails: tuple[str, ...]
    """Noun phrases that may close a title of this type."""
    attributes: tuple[str, ...]
    groups: tuple[str, ...]
    price: tuple[float, float]


def _t(name: str, category: str, sub: str, nouns: str, tails: str, attrs: str, groups: str,
       lo: float, hi: float) -> _TypeSpec:
    roots = {
        "apparel": ("Clothing, Shoes & Jewelry", "Clothing"),
        "footwear": ("Clothing, Shoes & Jewelry", "Shoes"),
        "beauty_health": ("Beauty & Personal Care",),
        "grocery": ("Grocery & Gourmet Food",),
        "electronics": ("Electronics",),
        "home_decor": ("Home & Kitchen",),
        "accessories": ("Clothing, Shoes & Jewelry", "Accessories"),
    }
    return _TypeSpec(name, category, (*roots[category], sub, name.title()), tuple(nouns.split()),
                     tuple(tails.split("|")), tuple(attrs.split("|")), tuple(groups.split("|")), (lo, hi))


PRODUCT_TYPES: tuple[_TypeSpec, ...] = (
    # apparel
    _t("t-shirt", "apparel", "Tops & Tees", "t-shirt", "Tee|Top|Shirt",
       "cotton|short sleeve|crew neck|machine washable|relaxed fit|moisture wicking", "size|color", 9, 35),
    _t("hoodie", "apparel", "Sweatshirts", "hoodie", "Sweatshirt|Pullover|Hooded Top",
       "fleece lined|long sleeve|drawstring closure|machine washable|kangaroo pocket|relaxed fit", "size|color",
       19, 60),
    _t("maxi dress", "apparel", "Dresses", "maxi dress", "Sundress|Gown|Dress",
       "short sleeve|v neck|elastic waist|hand wash|flowy fit|side pockets", "size|color", 18, 70),
    _t("jeans", "apparel", "Jeans", "jeans", "Denim Pants|Denim|Pants",
       "slim fit|stretch denim|button closure|machine washable|high waist|straight leg", "waist|color", 22, 80),
    _t("leggings", "apparel", "Active", "leggings", "Yoga Pants|Workout Tights|Pants",
       "high waist|tummy control|squat proof|moisture wicking|four way stretch|side pockets", "size|color", 12, 45),
    _t("pajama set", "apparel", "Sleep & Lounge", "pajama set", "Sleepwear|Loungewear|Nightwear",
       "soft fabric|long sleeve|elastic waist|machine washable|button down|short sleeve", "size|color", 16, 55),
    _t("pullover sweater", "apparel", "Sweaters", "sweater", "Jumper|Knitwear|Top",
       "cable knit|crew neck|long sleeve|hand wash|relaxed fit|turtleneck", "size|color", 20, 75),
    _t("rain jacket", "apparel", "Coats & Jackets", "rain jacket", "Windbreaker|Raincoat|Shell",
       "water resistant|zip closure|hooded|packable|lightweight|adjustable cuffs", "size|color", 28, 120),
    _t("swim trunks", "apparel", "Swim", "swim trunks", "Board Shorts|Swimwear|Beach Shorts",
       "quick drying|mesh lining|elastic waist|drawstring closure|uv protection|side pockets", "size|color", 12, 40),
    _t("polo shirt", "apparel", "Shirts", "polo shirt", "Golf Shirt|Top|Shirt",
       "short sleeve|button closure|moisture wicking|regular fit|cotton|machine washable", "size|color", 14, 50),
    # footwear
    _t("running shoes", "footwear", "Athletic", "shoes", "Sneakers|Trainers|Gym Shoes",
       "breathable mesh|rubber sole|lace up|lightweight|arch support|non slip", "shoe size|color", 30, 140),
    _t("slip on sneakers", "footwear", "Fashion Sneakers", "slip sneakers", "Canvas Shoes|Loafers|Shoes",
       "slip on|memory foam|canvas upper|rubber sole|machine washable|lightweight", "shoe size|color", 20, 80),
    _t("hiking boots", "footwear", "Outdoor", "hiking boots", "Trekking Shoes|Trail Boots|Boots",
       "waterproof|ankle support|rubber sole|lace up|slip resistant|padded collar", "shoe size|color", 45, 180),
    _t("slide sandals", "footwear", "Sandals", "slide sandals", "Slides|Pool Shoes|Sandals",
       "open toe|quick drying|non slip|arch support|lightweight|cushioned footbed", "shoe size|color", 10, 45),
    _t("house slippers", "footwear", "Slippers", "house slippers", "Bedroom Shoes|Slippers|Scuffs",
       "memory foam|plush lining|non slip|machine washable|closed toe|rubber sole", "shoe size|color", 12, 40),
    _t("ankle boots", "footwear", "Boots", "ankle boots", "Booties|Chelsea Boots|Boots",
       "side zipper|block heel|faux leather|round toe|rubber sole|padded insole", "shoe size|color", 30, 130),
    _t("loafers", "footwear", "Loafers & Slip-Ons", "loafers", "Driving Shoes|Moccasins|Dress Shoes",
       "slip on|genuine leather|cushioned insole|rubber sole|classic fit|lightweight", "shoe size|color", 35, 150),
    _t("flip flops", "footwear", "Sandals", "flip flops", "Thong Sandals|Beach Sandals|Sandals",
       "arch support|quick drying|lightweight|non slip|open toe|soft footbed", "shoe size|color", 8, 35),
    # beauty and health
    _t("eye shadow palette", "beauty_health", "Makeup", "eye shadow palette", "Makeup Kit|Eye Makeup|Cosmetics",
       "long lasting|highly pigmented|cruelty free|easy to apply|paraben free|blendable", "shade", 8, 45),
    _t("matte lipstick", "beauty_health", "Makeup", "lipstick", "Lip Color|Lip Makeup|Lip Stain",
       "long lasting|cruelty free|moisturizing|vegan|easy to apply|transfer proof", "shade|count", 6, 30),
    _t("shampoo", "beauty_health", "Hair Care", "shampoo", "Hair Wash|Hair Care|Cleanser",
       "sulfate free|paraben free|natural ingredients|color safe|hair growth|dry scalp", "scent|volume", 7, 40),
    _t("face serum", "beauty_health", "Skin Care", "face serum", "Skin Care|Facial Treatment|Essence",
       "hyaluronic acid|fragrance free|anti aging|dermatologist tested|sensitive skin|vitamin c", "volume", 10, 60),
    _t("body lotion", "beauty_health", "Skin Care", "body lotion", "Moisturizer|Body Cream|Skin Care",
       "fragrance free|dry skin|non greasy|shea butter|natural ingredients|sensitive skin", "scent|volume", 6, 30),
    _t("nail polish", "beauty_health", "Nail Care", "nail polish", "Nail Lacquer|Manicure Set|Nail Color",
       "quick drying|long lasting|non toxic|high gloss|vegan|chip resistant", "shade|count", 5, 25),
    _t("hair extensions", "beauty_health", "Hair Care", "hair extensions", "Hairpieces|Hair Pieces|Wig Pieces",
       "natural looking|clip in|heat resistant|easy to apply|human hair|tangle free", "hair color|length", 15, 120),
    _t("toothpaste", "beauty_health", "Oral Care", "toothpaste", "Tooth Gel|Oral Care|Dental Care",
       "fluoride free|teeth whitening|sensitive teeth|natural ingredients|fresh breath|vegan", "flavor|count", 4, 25),
    _t("sunscreen lotion", "beauty_health", "Skin Care", "sunscreen lotion", "Sun Care|Sunblock|Skin Protection",
       "spf 50|water resistant|reef safe|non greasy|fragrance free|broad spectrum", "volume|count", 7, 35),
    _t("makeup brush set", "beauty_health", "Tools & Accessories", "makeup brush set", "Brushes|Cosmetic Tools|Kit",
       "synthetic hair|cruelty free|travel size|easy to clean|soft bristles|storage case", "color", 8, 40),
    # grocery
    _t("coffee beans", "grocery", "Coffee", "coffee beans", "Whole Bean Coffee|Coffee|Roast",
       "usda organic|fair trade|non gmo|kosher|whole bean|single origin", "roast|weight", 9, 45),
    _t("green tea bags", "grocery", "Tea", "tea bags", "Tea|Herbal Tea|Infusion",
       "usda organic|non gmo|gluten free|individually wrapped|kosher|natural flavors", "flavor|count", 5, 30),
    _t("protein bars", "grocery", "Snacks", "protein bars", "Snack Bars|Nutrition Bars|Bars",
       "high protein|gluten free|low sugar|keto friendly|non gmo|plant based", "flavor|count", 12, 45),
    _t("potato chips", "grocery", "Snacks", "potato chips", "Chips|Snacks|Crisps",
       "gluten free|non gmo|kosher|individually wrapped|vegan|kettle cooked", "flavor|count", 6, 30),
    _t("dark chocolate bar", "grocery", "Candy & Chocolate", "chocolate bar", "Chocolate|Candy|Treats",
       "sugar free|keto friendly|fair trade|dairy free|gluten free|usda organic", "flavor|count", 5, 35),
    _t("extra virgin olive oil", "grocery", "Pantry", "olive oil", "Cooking Oil|Oil|Pantry Staple",
       "cold pressed|usda organic|non gmo|kosher|first cold press|single origin", "volume|count", 9, 50),
    _t("trail mix", "grocery", "Snacks", "trail mix", "Nut Mix|Snack Mix|Snacks",
       "high protein|individually wrapped|gluten free|no added sugar|resealable bag|non gmo", "flavor|weight", 8, 35),
    _t("gummy candy", "grocery", "Candy & Chocolate", "gummy candy", "Gummies|Candy|Sweets",
       "fat free|gluten free|individually wrapped|vegan|natural flavors|gelatin free", "flavor|weight", 5, 28),
    _t("beef jerky", "grocery", "Meat Snacks", "beef jerky", "Meat Snack|Jerky|Snacks",
       "high protein|low fat|gluten free|keto friendly|no preservatives|grass fed", "flavor|weight", 8, 40),
    _t("granola", "grocery", "Breakfast", "granola", "Cereal|Breakfast Clusters|Muesli",
       "whole grain|non gmo|low sugar|gluten free|plant based|high fiber", "flavor|weight", 5, 25),
    # electronics
    _t("wireless earbuds", "electronics", "Headphones", "earbuds", "Earphones|Headphones|Headset",
       "noise cancelling|wireless bluetooth|long battery life|water resistant|fast charging|hands free", "color",
       15, 150),
    _t("bluetooth speaker", "electronics", "Portable Audio", "bluetooth speaker", "Speaker|Sound Box|Audio Player",
       "portable|waterproof|long battery life|wireless bluetooth|stereo sound|built in microphone", "color", 18, 120),
    _t("phone case", "electronics", "Cell Phone Accessories", "phone case", "Cover|Bumper Case|Case",
       "shockproof|slim fit|wireless charging compatible|drop protection|raised edges|anti scratch", "device|color",
       6, 35),
    _t("usb c cable", "electronics", "Cables", "usb c cable", "Charger Cord|Charging Cable|Cord",
       "fast charging|braided nylon|high speed|durable|data transfer|tangle free", "cable length|color", 5, 25),
    _t("power bank", "electronics", "Chargers", "power bank", "Portable Charger|Battery Pack|Charger",
       "fast charging|portable|usb c|led display|dual output|compact design", "capacity|color", 15, 70),
    _t("hdmi cable", "electronics", "Cables", "hdmi cable", "Cord|Video Cable|Cable",
       "4k ultra hd|high speed|gold plated|plug and play|braided|ethernet support", "cable length", 6, 30),
    _t("security camera", "electronics", "Surveillance", "security camera", "Cam|Surveillance Camera|Monitor",
       "night vision|motion detection|easy to install|two way audio|1080p hd|cloud storage", "bundle", 25, 200),
    _t("computer mouse", "electronics", "Computer Accessories", "computer mouse", "Mouse|Mice|Pointer",
       "wireless|ergonomic design|silent click|usb receiver|long battery life|adjustable dpi", "color", 9, 60),
    _t("mechanical keyboard", "electronics", "Computer Accessories", "keyboard", "Gaming Keyboard|Keypad|Keyboard",
       "rgb backlit|wired usb|anti ghosting|compact layout|durable|hot swappable", "switch|color", 25, 130),
    _t("tablet stand", "electronics", "Tablet Accessories", "tablet stand", "Holder|Mount|Stand",
       "adjustable angle|aluminum alloy|foldable|non slip|portable|heavy duty", "color", 9, 45),
    # home decor and furniture
    _t("throw pillow covers", "home_decor", "Decorative Pillows", "throw pillow covers",
       "Cushion Covers|Pillowcases|Covers",
       "machine washable|hidden zipper|living room|soft velvet|double sided|farmhouse style", "pillow size|color",
       9, 35),
    _t("area rug", "home_decor", "Rugs", "area rug", "Carpet|Floor Mat|Runner",
       "non shedding|easy to clean|living room|non slip backing|stain resistant|low pile", "rug size|color", 25, 250),
    _t("blackout curtains", "home_decor", "Window Treatments", "curtains", "Drapes|Window Panels|Curtain Panels",
       "thermal insulated|machine washable|bedroom|grommet top|room darkening|noise reducing", "panel size|color",
       15, 70),
    _t("canvas wall art", "home_decor", "Wall Decor", "canvas wall art", "Wall Decor|Prints|Painting",
       "ready to hang|living room|framed|waterproof ink|bedroom|gallery wrapped", "art size|style", 15, 120),
    _t("table lamp", "home_decor", "Lighting", "table lamp", "Desk Lamp|Nightstand Lamp|Light",
       "touch control|usb port|bedroom|dimmable|easy assembly|fabric shade", "color", 18, 90),
    _t("bookshelf", "home_decor", "Furniture", "bookshelf", "Bookcase|Storage Shelf|Shelving Unit",
       "easy assembly|space saving|metal frame|industrial style|living room|wall mounted", "tiers|color", 35, 220),
    _t("bed sheet set", "home_decor", "Bedding", "bed sheet set", "Sheets|Bedding|Linens",
       "deep pocket|machine washable|wrinkle free|breathable|microfiber|egyptian cotton", "bed size|color", 18, 110),
    _t("storage ottoman", "home_decor", "Furniture", "storage ottoman", "Footrest|Bench|Pouf",
       "foldable|faux leather|living room|space saving|easy assembly|lift top", "color", 25, 120),
    _t("shower curtain", "home_decor", "Bath", "shower curtain", "Bath Curtain|Curtain|Liner",
       "waterproof|machine washable|hooks included|mildew resistant|weighted hem|quick drying", "style|color", 10, 40),
    _t("dining chairs", "home_decor", "Furniture", "dining chairs", "Kitchen Chairs|Side Chairs|Seats",
       "solid wood|easy assembly|mid century|upholstered seat|dining room|high back", "set size|color", 60, 300),
    # accessories
    _t("polarized sunglasses", "accessories", "Sunglasses", "sunglasses", "Shades|Eyewear|Glasses",
       "polarized lens|uv protection|lightweight|metal frame|case included|unisex", "frame color|lens color", 10, 90),
    _t("leather wallet", "accessories", "Wallets", "leather wallet", "Billfold|Card Holder|Wallet",
       "rfid blocking|genuine leather|slim design|gift box|id window|coin pocket", "color", 12, 60),
    _t("laptop backpack", "accessories", "Bags", "laptop backpack", "Rucksack|Daypack|Travel Bag",
       "water resistant|usb charging port|padded compartment|anti theft|lightweight|luggage strap", "color", 20, 90),
    _t("baseball cap", "accessories", "Hats & Caps", "baseball cap", "Hat|Dad Hat|Cap",
       "adjustable strap|cotton|breathable|unisex|washed finish|curved brim", "color", 8, 30),
    _t("analog watch", "accessories", "Watches", "watch", "Wristwatch|Timepiece|Watch",
       "stainless steel|water resistant|quartz movement|leather band|gift box|luminous hands", "color", 20, 200),
    _t("leather belt", "accessories", "Belts", "leather belt", "Dress Belt|Waist Belt|Strap",
       "genuine leather|reversible|adjustable|gift box|alloy buckle|casual style", "belt size|color", 10, 45),
    _t("silk scarf", "accessories", "Scarves", "silk scarf", "Shawl|Wrap|Neckerchief",
       "lightweight|soft fabric|hand wash|all season|gift box|square shape", "color", 9, 50),
    _t("tote bag", "accessories", "Handbags", "tote bag", "Shoulder Bag|Handbag|Purse",
       "large capacity|zipper closure|water resistant|vegan leather|shoulder strap|inner pockets", "color", 15, 80),
    _t("stud earrings", "accessories", "Jewelry", "stud earrings", "Earrings|Ear Studs|Jewelry",
       "hypoallergenic|gift box|nickel free|cubic zirconia|screw back|everyday wear", "metal", 9, 90),
    _t("pendant necklace", "accessories", "Jewelry", "pendant necklace", "Necklace|Chain|Jewelry",
       "hypoallergenic|gift box|adjustable chain|nickel free|cubic zirconia|everyday wear", "metal|chain length",
       12, 120),
)

_BRAND_HEADS = ("Luna", "Nova", "Aster", "Birch", "Cedar", "Echo", "Fable", "Harbo", "Iri", "Juni", "Kestra",
                "Mapl", "Nor", "Orchi", "Pebbl", "Quil", "Rive", "Sabl", "Tundr", "Vel", "Willo", "Zephy", "Coral",
                "Dune")
_BRAND_TAILS = ("vo", "ique", "ora", "wick", "ton", "elle", "ux", "ara", "ix", "ette", "mont", "ly")
_UPPER = {"usb": "USB", "hdmi": "HDMI", "spf": "SPF", "uv": "UV", "led": "LED", "rgb": "RGB", "4k": "4K",
          "hd": "HD", "usda": "USDA", "gmo": "GMO", "1080p": "1080P", "rfid": "RFID", "id": "ID", "dpi": "DPI"}
_PRICE_GRID = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 120.0, 150.0,
               200.0, 250.0, 300.0, 400.0)
_DESCRIPTIONS = (
    "This {type} from {brand} is {a1} and {a2}, made for everyday use.",
    "Meet the {brand} {type}: {a1}, {a2}, and built to last.",
    "Looking for {art_type} that {is_} {a1}? This one from {brand} is also {a2}.",
)
_CLOSINGS = (
    "Please check the option chart before you order.",
    "Backed by a 30-day satisfaction guarantee.",
    "A thoughtful gift for friends and family.",
    "Ships in recyclable packaging.",
)
_BULLETS = (
    "{A}: one of the details customers value most.",
    "{A} - designed with daily use in mind.",
    "Key feature: {a}.",
)
_REVIEWS = (
    (5, "Exactly as described, I would buy again."),
    (5, "Great quality for the price."),
    (4, "Nice {type}, arrived quickly and well packed."),
    (4, "Good value, the {value} option matches the pictures."),
    (3, "It is okay, but not as sturdy as I hoped."),
    (2, "Did not match the description, I returned it."),
)
_INSTRUCTIONS = (
    "i need {a_attrs_type}{opts}, and price lower than {price} dollars",
    "i am looking for {a_type} that {is_} {attrs}{opts}, and price lower than {price} dollars",
    "find me {attrs_type}{opts}, and price lower than {price} dollars",
    "i want to buy {a_type} with {attrs}{opts}, and price lower than {price} dollars",
    "looking for {attrs_type}{opts}, and price lower than {price} dollars",
)


@dataclass(frozen=True)
class Product:
    """One catalogue item."""

    asin: str
    """Ten-character product id (upper case, starts with ``B0``); clicked in lower case."""
    title: str
    category: str
    """One of ``CATEGORIES``."""
    category_path: tuple[str, ...]
    """Breadcrumb from the store root to the product type."""
    product_type: str
    title_nouns: tuple[str, ...]
    """Lower-case nouns of the title (brand, type nouns, closing noun phrase); used by the type factor."""
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    """(group name, values) per option group, in display order; values are unique within a product."""
    price: float
    description: str
    features: tuple[str, ...]
    reviews: tuple[tuple[int, str], ...]
    """(rating out of 5, text) pairs."""

    @property
    def rating(self) -> float:
        """Mean review rating (0.0 when there are no reviews)."""
        return sum(r for r, _ in self.reviews) / len(self.reviews) if self.reviews else 0.0


@dataclass(frozen=True)
class Goal:
    """One shopping instruction and what a purchase must match."""

    goal_id: str
    """Task id, ``"<split>-<index:04d>"``."""
    split: str
    asin: str
    """The product the goal was built from (it satisfies the goal)."""
    instruction: str
    category: str
    product_type: str
    category_path: tuple[str, ...]
    title_nouns: tuple[str, ...]
    """Nouns of the source product's title (WebShop compares the bought title's nouns with these)."""
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    """(group name, required value) pairs."""
    price_upper: float


@dataclass(frozen=True)
class Catalog:
    """Products plus goals by split."""

    products: tuple[Product, ...]
    goals: Mapping[str, tuple[Goal, ...]]
    """Split name (``"train"``, ``"eval"``) -> goals in a fixed order."""
    seed: int = DEFAULT_SEED


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _titlecase(text: str) -> str:
    return " ".join(_UPPER.get(w, w[:1].upper() + w[1:]) for w in text.split())


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _plural(product_type: str) -> bool:
    return product_type.endswith("s") and not product_type.endswith("ss")


def _with_article(phrase: str, product_type: str) -> str:
    """``phrase`` (which ends with ``product_type``) with "a"/"an" in front unless the type is plural."""
    return phrase if _plural(product_type) else f"{_article(phrase)} {phrase}"


def _make_product(rng: random.Random, spec: _TypeSpec, used_asins: set[str]) -> Product:
    while True:
        asin = "B0" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(8))
        if asin not in used_asins:
            used_asins.add(asin)
            break
    brand = rng.choice(_BRAND_HEADS) + rng.choice(_BRAND_TAILS)
    attributes = tuple(rng.sample(spec.attributes, rng.randint(3, 5)))
    seen: set[str] = set()
    options = []
    for group in spec.groups:
        pool = [v for v in _GROUPS[group] if v not in seen]
        values = tuple(sorted(rng.sample(pool, rng.randint(2, min(6, len(pool)))), key=_GROUPS[group].index))
        seen.update(values)
        options.append((group, values))
    lo, hi = spec.price
    price = round(rng.uniform(lo, hi), 0) - 0.01 if rng.random() < 0.6 else round(rng.uniform(lo, hi), 2)
    price = max(price, 1.99)
    tail = rng.choice(spec.tails)
    a1, a2 = attributes[0], attributes[1]
    title = f"{brand} {_titlecase(a1)} {_titlecase(spec.name)}, {_titlecase(a2)} {tail}"
    nouns = dict.fromkeys([brand.lower(), *spec.nouns, *tail.lower().split()])
    values = [v for _, vs in options for v in vs]
    description = " ".join([
        rng.choice(_DESCRIPTIONS).format(type=spec.name, art_type=_with_article(spec.name, spec.name), brand=brand,
                                         is_="are" if _plural(spec.name) else "is", a1=a1, a2=a2),
        "Available options: " + "; ".join(f"{g}: " + ", ".join(vs) for g, vs in options) + ".",
        rng.choice(_CLOSINGS),
    ])
    features = tuple(
        rng.choice(_BULLETS).format(A=_titlecase(a), a=a, type=spec.name) for a in attributes
    )
    picks = rng.sample(_REVIEWS, rng.randint(2, 4))
    reviews = tuple((r, text.format(type=spec.name, value=rng.choice(values))) for r, text in picks)
    return Product(asin, title, spec.category, spec.path, spec.name, tuple(nouns), attributes, tuple(options),
                   float(price), description, features, reviews)


def _price_bound(rng: random.Random, price: float) -> float:
    above = [p for p in _PRICE_GRID if p >= price + 0.5]
    if not above:
        return float(int(price) + 100)
    return rng.choice(above[:3])


def _instruction(rng: random.Random, product_type: str, attributes: tuple[str, ...],
                 options: tuple[tuple[str, str], ...], price_upper: float) -> str:
    if len(attributes) <= 2:
        attrs = " and ".join(attributes)
    else:
        attrs = ", ".join(attributes[:-1]) + f", and {attributes[-1]}"
    values = [v for _, v in options]
    style = rng.randrange(3)
    if not options:
        opts = ""
    elif style == 0:
        opts = " in " + " and ".join(values)
    elif style == 1:
        opts = " with " + ", ".join(f"{g}: {v}" for g, v in options)
    else:
        opts = "".join(f", {g}: {v}" for g, v in options)
    attrs_type = f"{attrs} {product_type}"
    return rng.choice(_INSTRUCTIONS).format(
        a_attrs_type=_with_article(attrs_type, product_type),
        a_type=_with_article(product_type, product_type),
        is_="are" if _plural(product_type) else "is",
        attrs=attrs,
        attrs_type=attrs_type,
        opts=opts,
        price=f"{price_upper:.2f}",
    )


def _make_goal(rng: random.Random, product: Product, goal_id: str, split: str) -> Goal:
    attributes = tuple(rng.sample(product.attributes, rng.randint(1, min(3, len(product.attributes)))))
    n_groups = len(product.options)
    k = rng.choice([g for g in (0, 1, 1, 2, 2, 2) if g <= n_groups] or [0])
    groups = sorted(rng.sample(range(n_groups), k))
    options = tuple((product.options[i][0], rng.choice(product.options[i][1])) for i in groups)
    price_upper = _price_bound(rng, product.price)
    return Goal(goal_id, split, product.asin, _instruction(rng, product.product_type, attributes, options,
                                                           price_upper),
                product.category, product.product_type, product.category_path, product.title_nouns, attributes,
                options, price_upper)


def generate_catalog(seed: int = DEFAULT_SEED, *, products_per_type: int = 16, num_train: int = 1000,
                     num_eval: int = 128) -> Catalog:
    """Build the catalogue and its goals; the same arguments always give the same catalogue.

    Args:
        seed: generator seed.
        products_per_type: products of each of the ``len(PRODUCT_TYPES)`` types (16 gives 1,104 products).
        num_train: goals in the ``train`` split (their products may repeat).
        num_eval: goals in the ``eval`` split, each from a distinct product that no train goal uses.

    Raises:
        ValueError: for non-positive sizes or more eval goals than products allow.
    """
    if products_per_type < 1 or num_train < 1 or num_eval < 1:
        raise ValueError("products_per_type, num_train and num_eval must be >= 1")
    used: set[str] = set()
    products = [
        _make_product(_rng(seed, "product", spec.name, j), spec, used)
        for spec in PRODUCT_TYPES for j in range(products_per_type)
    ]
    rng = _rng(seed, "catalog")
    rng.shuffle(products)
    if num_eval >= len(products):
        raise ValueError(f"num_eval={num_eval} needs fewer eval goals than the {len(products)} products")
    order = list(range(len(products)))
    rng.shuffle(order)
    eval_products, train_products = order[:num_eval], order[num_eval:]
    goals = {
        "eval": tuple(_make_goal(_rng(seed, "eval", i), products[p], f"eval-{i:04d}", "eval")
                      for i, p in enumerate(eval_products)),
        "train": tuple(_make_goal(_rng(seed, "train", i), products[rng.choice(train_products)],
                                  f"train-{i:04d}", "train") for i in range(num_train)),
    }
    return Catalog(tuple(products), goals, seed)


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def write_catalog(folder: Path | str, catalog: Catalog | None = None) -> Path:
    """Write ``products.json`` and ``goals.json`` into ``folder`` (created if needed); returns the folder.

    Args:
        folder: destination folder.
        catalog: what to write; None -> ``generate_catalog()`` (the default catalogue).
    """
    folder = Path(folder)
    catalog = generate_catalog() if catalog is None else catalog
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PRODUCTS_FILE).write_text(
        json.dumps({"seed": catalog.seed, "products": [asdict(p) for p in catalog.products]}, indent=1),
        encoding="utf-8")
    (folder / GOALS_FILE).write_text(
        json.dumps({split: [asdict(g) for g in goals] for split, goals in catalog.goals.items()}, indent=1),
        encoding="utf-8")
    return folder


def load_catalog(folder: Path | str) -> Catalog:
    """Read a catalogue written by ``write_catalog``.

    Raises:
        FileNotFoundError: when ``products.json`` or ``goals.json`` is missing (the message names the writer).
        ValueError: when a goal refers to a product that is not in the catalogue.
    """
    folder = Path(folder)
    for name in (PRODUCTS_FILE, GOALS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} does not exist; write a catalogue there with "
                "sdar.envs.webshop.write_catalog(folder, generate_catalog(seed))")
    raw_products = read_json(folder / PRODUCTS_FILE, what="WebShop catalogue")
    raw_goals = read_json(folder / GOALS_FILE, what="WebShop goal file")
    products = tuple(Product(**{k: _tuples(v) for k, v in p.items()}) for p in raw_products["products"])
    goals = {split: tuple(Goal(**{k: _tuples(v) for k, v in g.items()}) for g in items)
             for split, items in raw_goals.items()}
    asins = {p.asin for p in products}
    missing = [g.goal_id for gs in goals.values() for g in gs if g.asin not in asins]
    if missing:
        raise ValueError(f"{folder}: goals {missing[:3]} refer to products missing from {PRODUCTS_FILE}")
    return Catalog(products, goals, int(raw_products.get("seed", DEFAULT_SEED)))
