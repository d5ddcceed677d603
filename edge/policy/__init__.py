"""The gate's policy: CertLogic, the rule engine, decisions and their events (specs/rules.md).

| module         | holds                                                                  |
|----------------|------------------------------------------------------------------------|
| ``certlogic``  | CertLogic 1.3.3: ``evaluate``, ``validate``, ``compile``, ``DateTime`` (stdlib only) |
| ``codegen``    | rules compiled to Python for the strict, hot path (differentially tested) |
| ``datamodel``  | the evaluation data object of §2.2 and ``external.derived``             |
| ``settings``   | load-time checks of the settings part (§2.3)                            |
| ``engine``     | ``RuleSet.from_parts``, ``DecisionInputs``, ``decide`` → ``Decision``     |
| ``bundle_view``| the ``BundleView`` protocol and ``InMemoryBundle``                      |
| ``events``     | ``decision`` / ``temp_alert`` / ``sentinel_alert`` payloads (sync.md §1.5)|
| ``ruletests``, ``explain``, ``cli`` | ``checkpoint admin rules test|explain`` (§5)          |

Import the submodules; this package imports nothing at load so that
``edge.policy.certlogic`` stays usable on its own.
"""

__all__: list[str] = []
