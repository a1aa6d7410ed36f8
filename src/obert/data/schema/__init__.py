"""What a valid row is, one schema per input format, checked as the data is read and so
before any model is loaded (``DataArgs.load``; ``DataArgs.check`` reads every file a command
names up front):

- ``glue``: a GLUE task's rows (TSV, CSV, JSON lines, parquet, the hub's split);
- ``squad``: SQuAD v1.1 (its JSON file, or the hub's rows);
- ``choice``: multiple choice (CommonsenseQA, WinoGrande, the generic form);
- ``text``: a JSON-lines corpus for masked-language modelling.

A bad row ends in one line, ``{file}, line {n}: {field} {what is wrong}; {how to fix}``
(``base``: pydantic's ``ValidationError`` and the schemas' ``RowError`` said that way).
"""
