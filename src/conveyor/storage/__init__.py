"""Storage: the engine from a URL, the tables, every SQL query, and the migrations.

Nothing here knows about HTTP. The server opens one transaction per unit of work with
`Store.transaction()` and calls the query methods of the `Tx` it gets.
"""

from conveyor.storage.engine import Database, open_database
from conveyor.storage.store import Store, Tx

__all__ = ["Database", "Store", "Tx", "open_database"]
