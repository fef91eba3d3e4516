"""Retrieval over the user's own data: answers computed from it instead of generated.

`labs.rag.transactions` answers questions about a transactions table exactly (pandas, no model)
and decides which questions are about that table at all.
"""
