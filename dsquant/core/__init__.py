"""The leaf layer: facts and checks every other part of dsquant reads, importing nothing else from
dsquant (a test walks the imports to keep it so)."""
