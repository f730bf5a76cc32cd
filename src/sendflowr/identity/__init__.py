"""Identity: identifiers, hashing and the universal-id resolver port."""
