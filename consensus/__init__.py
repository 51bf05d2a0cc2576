"""swarmlm.consensus"""
