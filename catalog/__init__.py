"""Search projections of the ledger's log, and the query service that reads them."""
from catalog.projection import Catalog, Hit, tokens

__all__ = ["Catalog", "Hit", "tokens"]
