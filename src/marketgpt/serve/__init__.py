"""The daily service: the signal log (db.py, log.py), realised outcomes (outcomes.py)."""
