"""The embedded demo dataset: a generator (``make_demo``) and small audio models.

The demo is ordinary data: ``demo_config.yaml`` points the data keys at the tree the generator
writes, and the same scanner, index and rules read it as they read Aff-Wild2. Nothing outside
this package imports it.
"""
