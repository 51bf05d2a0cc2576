"""swarmlm.bench"""
