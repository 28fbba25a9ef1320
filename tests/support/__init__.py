"""Helpers shared by test modules that are not fixtures (see the conftest.py files for those).

No test module imports another; what two of them share lives here:

- ``waiting``: ``wait_for`` and ``wait_still`` instead of sleeps, ``FakeClock`` for code that takes a clock.
- ``market``: the transfer tests' users, document and sales, with the ledger stood in for.
- ``refusals``: ``refused``, a command the in-memory ledger must refuse without changing anything.
- ``broker_roles``: throwaway vhosts with ACB's broker roles.
- ``cluster``: replica processes and the ``acb`` command line for the e2e tests.
- ``attacker``, ``flood``: the trust tests' attackers and load.
"""
