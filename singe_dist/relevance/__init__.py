"""Channel relevance: dependency groups, the removal path (gates) and the criteria."""
