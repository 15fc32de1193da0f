"""Generated code of dcnr.v1, from api/proto/dcnr/v1/*.proto.

Do not edit: regenerate with `make proto` (python -m api.codegen).
"""
