module github.com/wss-project/wss/clients/verify/go

go 1.19
