"""Generated from proto/jobledger/v1/ledger.proto by clients/python/generate.sh: do not edit."""
