terraform {
  required_version = ">= 1.5"
  required_providers {
    safebox = {
      source  = "safebots/safebox"
      version = ">= 0.1.0"
    }
  }
}
