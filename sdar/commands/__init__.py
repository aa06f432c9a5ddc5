"""The user-facing commands, the layer above the library: ``sdar`` (cli), train, sft, eval, compare, report, demo.

Modules here may import the library and each other; no library module imports this package
(``tests/test_architecture.py`` enforces it).
"""
