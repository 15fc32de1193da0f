"""Generated code of the dcnr protobuf packages.

Do not edit: regenerate with `make proto` (python -m api.codegen).
"""
