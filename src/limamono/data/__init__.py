"""Package data: the stock-phrase list (``slop.txt``) and other shipped text files."""
