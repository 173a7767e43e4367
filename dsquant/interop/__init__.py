"""Arrays in and out: DLPack (``_array``), one adapter per framework (``adapters``), operands (``operand``)."""
