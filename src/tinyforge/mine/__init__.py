"""Mine: self-generated problems (``problems``); attempts and (broken, fixed) pairs come next."""
