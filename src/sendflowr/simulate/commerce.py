"""The simulated shop: a small seeded catalog and the orders that follow clicks. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import numpy as np
from numpy.typing import NDArray

SHOP_URL: Final = "https://shop.sim.sendflowr.test"
MAX_ITEMS: Final = 3

_PRODUCT_NAMES: Final = (
    "Linen Shirt",
    "Canvas Tote",
    "Merino Beanie",
    "Trail Socks",
    "Ceramic Mug",
    "Leather Wallet",
    "Rain Jacket",
    "Cotton Hoodie",
    "Wool Scarf",
    "Travel Bottle",
    "Denim Cap",
    "Field Notebook",
    "Desk Lamp",
    "Running Tee",
    "Silk Pillowcase",
    "Bamboo Towel",
)
_DISCOUNT_CODES: Final = ("WELCOME10", "SPRING15", "VIP20", "FREESHIP")


@dataclass(frozen=True, slots=True)
class Catalog:
    skus: tuple[str, ...]
    names: tuple[str, ...]
    prices: NDArray[np.float64]
    popularity: NDArray[np.float64]  # probability of each product being viewed or bought

    def __len__(self) -> int:
        return len(self.skus)

    def url(self, sku: int, utm: dict[str, str] | None = None) -> str:
        base = f"{SHOP_URL}/products/{self.skus[sku].lower()}"
        return f"{base}?{urlencode(utm)}" if utm else base

    def draw(self, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
        return rng.choice(len(self.skus), size=size, p=self.popularity).astype(np.int64)


def make_catalog(rng: np.random.Generator, order_value_median: float) -> Catalog:
    n = len(_PRODUCT_NAMES)
    # An order has about 1.9 units on average, so unit prices centre on half the order median.
    raw = np.exp(np.log(order_value_median / 1.9) + 0.45 * rng.standard_normal(n))
    prices = np.maximum(np.round(raw) - 0.01, 0.99)
    weights = 1.0 / np.arange(1, n + 1) ** 0.8  # a few bestsellers, a long tail
    popularity = weights[rng.permutation(n)]
    skus = tuple(f"SKU-{1000 + i}" for i in range(n))
    return Catalog(skus, _PRODUCT_NAMES, prices, popularity / popularity.sum())


@dataclass(frozen=True, slots=True)
class Orders:
    """One row per order; item columns beyond `n_items` are unused."""

    n_items: NDArray[np.int64]
    sku: NDArray[np.int64]  # (orders, MAX_ITEMS)
    quantity: NDArray[np.int64]  # (orders, MAX_ITEMS)
    discount: NDArray[np.int64]  # index into the discount codes, -1 for none
    value: NDArray[np.float64]


def draw_orders(
    rng: np.random.Generator, catalog: Catalog, featured: NDArray[np.int64], discount_share: float
) -> Orders:
    """Orders whose first item is the product the email featured (what the click landed on)."""
    n = featured.shape[0]
    n_items = rng.choice(np.arange(1, MAX_ITEMS + 1), size=n, p=(0.55, 0.3, 0.15))
    sku = catalog.draw(rng, n * MAX_ITEMS).reshape(n, MAX_ITEMS)
    sku[:, 0] = featured
    quantity = np.where(rng.random((n, MAX_ITEMS)) < 0.85, 1, 2).astype(np.int64)
    used = np.arange(MAX_ITEMS)[None, :] < n_items[:, None]
    gross = (catalog.prices[sku] * quantity * used).sum(axis=1)
    has_discount = rng.random(n) < discount_share
    discount = np.where(has_discount, rng.integers(0, len(_DISCOUNT_CODES), size=n), -1).astype(
        np.int64
    )
    value = np.round(np.where(has_discount, gross * 0.9, gross), 2)
    return Orders(n_items.astype(np.int64), sku, quantity, discount, value)


def order_properties(
    orders: Orders,
    row: int,
    catalog: Catalog,
    currency: str,
    order_id: str,
    utm: dict[str, str],
    message_id: str,
) -> dict[str, Any]:
    items = [
        {
            "sku": catalog.skus[s],
            "name": catalog.names[s],
            "quantity": int(q),
            "price": float(catalog.prices[s]),
        }
        for s, q in zip(
            orders.sku[row, : orders.n_items[row]].tolist(),
            orders.quantity[row, : orders.n_items[row]].tolist(),
            strict=True,
        )
    ]
    props: dict[str, Any] = {
        "$value": float(orders.value[row]),
        "Currency": currency,
        "OrderId": order_id,
        "Items": items,
        "ItemNames": [item["name"] for item in items],
        "$attributed_message": message_id,
        **utm,
    }
    code = int(orders.discount[row])
    if code >= 0:
        props["DiscountCode"] = _DISCOUNT_CODES[code]
    return props
