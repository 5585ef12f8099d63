"""Model families behind one seam (see panollava.families.base)."""
