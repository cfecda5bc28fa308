module wssverify

go 1.19
