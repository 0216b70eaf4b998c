"""Data at rest: backends, the DAG index, trees, transactions and documents."""
