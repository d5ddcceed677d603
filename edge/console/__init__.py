"""The guard console (console.md): FastAPI app, accounts and PINs, the event stream.

``ConsoleServer`` serves ``web.create_app`` from a thread of the gate process;
the gate process implements ``ConsoleBackend``. The console never decides: it
shows masked decision views and hands guard actions to the decision loop.
"""

from edge.console.accounts import Account, Accounts, PinGate, hash_pin, verify_pin
from edge.console.server import ConsoleServer
from edge.console.stream import Broadcaster
from edge.console.views import decision_view
from edge.console.web import ConsoleBackend, ConsoleRefusal, ManualRequest, OverrideRequest, create_app

__all__ = [
    "Account",
    "Accounts",
    "Broadcaster",
    "ConsoleBackend",
    "ConsoleRefusal",
    "ConsoleServer",
    "ManualRequest",
    "OverrideRequest",
    "PinGate",
    "create_app",
    "decision_view",
    "hash_pin",
    "verify_pin",
]
