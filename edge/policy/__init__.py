"""The gate's policy: CertLogic (``certlogic``), the rule engine (``engine``), default rules.

Specs: ``specs/rules.md`` (language, data model, decisions, default rule set).
"""
